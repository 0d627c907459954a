// "Where did it look?" and "first layer": the page's look inside the network.
// Loaded after app.js and uses its page state (state, chosenModel, headers, errorMessage).
// Talks to POST /v1/models/{name}/explain (format=png) and /v1/models/{name}/first-layer.
"use strict";

const look = { url: null, busy: 0 };

function lookFor(id) { return document.getElementById(id); }

function modelUrl(model, path) {
  return `/v1/models/${encodeURIComponent(model.name)}/versions/${model.version}/${path}`;
}

function imageForm() {
  const form = new FormData();
  form.append("file", state.image, state.imageName || "image");
  return form;
}

// The classify answer's bars are the classes one can ask about (top-1 first).
function syncExplainPanel() {
  const model = chosenModel();
  const labels = Array.from(document.querySelectorAll("#results > .bar"),
    (bar) => bar.dataset.label);
  const panel = lookFor("explain");
  const usable = model && model.task === "classification" && labels.length > 0 &&
    (model.explain || []).length > 0;
  panel.hidden = !usable;
  if (!usable) { hideExplanation(); return; }
  const select = lookFor("explain-class");
  const previous = select.value;
  select.replaceChildren(...labels.map((label) => {
    const option = document.createElement("option");
    option.value = label;
    option.textContent = label;
    return option;
  }));
  if (labels.includes(previous)) select.value = previous;
  const method = model.explain[0];
  lookFor("explain-note").textContent = method === "cam"
    ? "class activation map: the classifier's weights for this class applied to the last " +
      "feature map (one extra small run)"
    : "occlusion: how much hiding each part of the image with a grey patch lowers this " +
      "class's score (65 images, batched)";
  if (lookFor("explain-toggle").checked) showExplanation();
}

function hideExplanation() {
  const shown = lookFor("explain-image");
  if (shown.hidden) return;
  shown.hidden = true;
  delete shown.dataset.class;
  lookFor("preview").hidden = false; // the explained photo stood in for it
}

async function showExplanation() {
  const model = chosenModel();
  const label = lookFor("explain-class").value;
  if (!model || !state.image || !label) return;
  const ticket = ++look.busy;
  const url = `${modelUrl(model, "explain")}?format=png&class=${encodeURIComponent(label)}`;
  try {
    const response = await fetch(url, { method: "POST", body: imageForm(), headers: headers() });
    if (!response.ok) throw new Error(await errorMessage(response));
    const blob = await response.blob();
    if (ticket !== look.busy || !lookFor("explain-toggle").checked) return; // superseded
    if (look.url) URL.revokeObjectURL(look.url);
    look.url = URL.createObjectURL(blob);
    const shown = lookFor("explain-image");
    await new Promise((resolve) => { shown.onload = resolve; shown.src = look.url; });
    shown.dataset.class = label;
    shown.hidden = false;
    lookFor("preview").hidden = true;
  } catch (err) {
    showError(err.message);
  }
}

function filterCanvas(filter) {
  const height = filter.length;
  const width = filter[0].length;
  const canvas = document.createElement("canvas");
  canvas.width = width;
  canvas.height = height;
  canvas.className = "filter";
  const ctx = canvas.getContext("2d");
  const pixels = ctx.createImageData(width, height);
  filter.forEach((row, y) => row.forEach((values, x) => {
    const rgb = values.length === 3 ? values : [values[0], values[0], values[0]];
    const at = 4 * (y * width + x);
    rgb.forEach((v, c) => { pixels.data[at + c] = Math.round(v * 255); });
    pixels.data[at + 3] = 255;
  }));
  ctx.putImageData(pixels, 0, 0);
  return canvas;
}

async function showFirstLayer() {
  const details = lookFor("first-layer");
  const model = chosenModel();
  if (!details.open || !model) return;
  const note = lookFor("first-layer-note");
  note.textContent = "reading the first layer…";
  const withImage = Boolean(state.image);
  const url = modelUrl(model, "first-layer") + (withImage ? "?count=8" : "");
  try {
    const response = await fetch(url, withImage
      ? { method: "POST", body: imageForm(), headers: headers() } : { headers: headers() });
    if (!response.ok) throw new Error(await errorMessage(response));
    const body = await response.json();
    const [count, channels, kh, kw] = body.shape;
    note.textContent = `${count} filters of ${kh}x${kw}x${channels} ` +
      `(stride ${body.stride.join("x")}${body.activation ? `, then ${body.activation}` : ""})` +
      (withImage ? `; below, the ${body.feature_maps.length} strongest of their ` +
        `${body.map_size.join("x")} maps of your image` : "; choose an image to see their maps");
    lookFor("filters").replaceChildren(...body.filters.map(filterCanvas));
    lookFor("feature-maps").replaceChildren(...body.feature_maps.map((map) => {
      const figure = document.createElement("figure");
      const img = document.createElement("img");
      img.src = map.image;
      img.alt = `feature map of filter ${map.index}`;
      const caption = document.createElement("figcaption");
      caption.textContent = `filter ${map.index}`;
      figure.append(img, caption);
      return figure;
    }));
  } catch (err) {
    note.textContent = err.message;
  }
}

function setUpLook() {
  new MutationObserver(syncExplainPanel).observe(lookFor("results"), { childList: true });
  lookFor("explain-toggle").addEventListener("change", (e) => {
    if (e.target.checked) showExplanation(); else hideExplanation();
  });
  lookFor("explain-class").addEventListener("change", () => {
    if (lookFor("explain-toggle").checked) showExplanation();
  });
  lookFor("first-layer").addEventListener("toggle", showFirstLayer);
  lookFor("model").addEventListener("change", showFirstLayer);
  lookFor("preview").addEventListener("load", () => {
    lookFor("explain-toggle").checked = false;
    hideExplanation();
    showFirstLayer();
  });
}

document.addEventListener("DOMContentLoaded", setUpLook);
