// convserve's page: pick a model, give it an image, show what the service answers.
// Plain JavaScript, no build step. Talks to the same REST API as any client:
//   GET /readyz, GET /v1/models, POST /v1/models/{name}/versions/{v}/classify,
//   POST /v1/expressions?model=&version=, WebSocket /v1/expressions/stream (live mode).
"use strict";

const $ = (id) => document.getElementById(id);
const state = { models: [], image: null, imageName: null };

function headers() {
  const key = $("api-key").value.trim();
  if (key) localStorage.setItem("convserve-api-key", key);
  else localStorage.removeItem("convserve-api-key");
  return key ? { Authorization: `Bearer ${key}` } : {};
}

// 401: the service has an API key. Open the key field and say what to do on this page (the
// service's own message speaks of request headers, which a person here does not write).
function askForKey() {
  $("api-key-box").open = true;
  $("api-key").focus();
  return $("api-key").value.trim()
    ? "The API key is wrong: correct it in the API key field below."
    : "This service needs an API key: enter it in the API key field below.";
}

// The service's own words: {"error": {"code", "message"}} or the v2 protocol's {"error": "..."}.
async function errorMessage(response) {
  if (response.status === 401) return askForKey();
  try {
    const body = await response.json();
    const error = body.error;
    if (typeof error === "string") return error;
    if (error && error.message) return error.message;
  } catch (_) { /* not JSON */ }
  return `${response.status} ${response.statusText}`;
}

function showError(message) {
  const box = $("error");
  box.textContent = message;
  box.hidden = !message;
}

function clearOutput() {
  showError("");
  $("summary").textContent = "";
  $("results").replaceChildren();
  $("overlay").hidden = true;
}

async function checkReady() {
  const status = $("status");
  try {
    const response = await fetch("/readyz");
    if (response.ok) {
      const body = await response.json();
      status.textContent = `ready: ${body.models.length} model version(s) loaded`;
      status.dataset.state = "ready";
      return true;
    }
    status.textContent = `not ready: ${await errorMessage(response)}`;
  } catch (err) {
    status.textContent = `the service does not answer (${err.message})`;
  }
  status.dataset.state = "waiting";
  return false;
}

// The page starts on a photo classifier: a new user's first image is a photo.
const PREFERRED_MODEL = "imagenet-mobilenetv2";
const GROUPS = [
  { id: "photos", label: "Photos: ImageNet's 1,000 classes" },
  { id: "faces", label: "Faces: expressions" },
  { id: "small", label: "Digits and clothes: small grey images" },
  { id: "other", label: "Other classifiers" },
];
// What a small model expects, by the data set it was trained on.
const HINTS = {
  "MNIST": "give it one handwritten digit, light on a dark background, filling the image",
  "Fashion-MNIST": "give it one garment or shoe, light on a dark background, centred",
};

function dataset(version) {
  const metrics = version.metrics || {};
  return (metrics.measured || metrics.reported || {}).dataset || "";
}

function groupOf(version) {
  if (version.task === "expression") return "faces";
  // An int8 model goes where its float model goes (its card names the source model).
  const source = (version.quantization || {}).source;
  const float = source && state.models.find((m) => m.name === source.name);
  const floatVersion = float && float.versions.find((v) => v.version === source.version);
  if (floatVersion) return groupOf(floatVersion);
  if (dataset(version).startsWith("ImageNet")) return "photos";
  if ((version.input || {}).channels === 1) return "small";
  return "other";
}

async function loadModels() {
  const response = await fetch("/v1/models", { headers: headers() });
  if (!response.ok) throw new Error(await errorMessage(response));
  const body = await response.json();
  state.models = body.models
    .map((m) => ({ ...m, versions: m.versions.filter((v) => v.task === "classification" ||
                                                     v.task === "expression") }))
    .filter((m) => m.versions.length);
  const select = $("model");
  const previous = select.value;
  select.replaceChildren(...GROUPS.map((group) => {
    const optgroup = document.createElement("optgroup");
    optgroup.label = group.label;
    optgroup.dataset.group = group.id;
    optgroup.append(...state.models.filter((m) => groupOf(defaultVersion(m)) === group.id)
      .map((m) => {
        const option = document.createElement("option");
        option.value = m.name;
        option.textContent = defaultVersion(m).quantization
          ? `${m.name} (int8: faster on a CPU)` : m.name;
        return option;
      }));
    return optgroup;
  }).filter((optgroup) => optgroup.children.length));
  const names = state.models.map((m) => m.name);
  const photos = state.models.filter((m) => groupOf(defaultVersion(m)) === "photos");
  select.value = names.includes(previous) ? previous
    : names.includes(PREFERRED_MODEL) ? PREFERRED_MODEL
    : photos.length ? photos[0].name : (names[0] || "");
  listVersions();
}

function defaultVersion(model) {
  return model.versions.find((v) => v.version === model.default_version) || model.versions[0];
}

function chosenEntry() {
  return state.models.find((m) => m.name === $("model").value);
}

// The versions of the chosen model, newest first, the default one selected.
function listVersions() {
  const model = chosenEntry();
  const select = $("version");
  select.replaceChildren(...(model ? model.versions : []).map((v) => {
    const option = document.createElement("option");
    option.value = String(v.version);
    const why = model.pinned ? "default" : "default: newest";
    option.textContent = v.version === model.default_version ? `v${v.version} (${why})`
      : `v${v.version}`;
    return option;
  }));
  if (model) select.value = String(model.default_version);
  describeModel();
}

function chosenModel() {
  const model = chosenEntry();
  if (!model) return undefined;
  const version = Number($("version").value);
  return model.versions.find((v) => v.version === version) || defaultVersion(model);
}

function describeModel() {
  const model = chosenModel();
  const info = $("model-info");
  if (!model) { info.textContent = "no classification or expression model is loaded"; return; }
  const input = model.input || {};
  const faces = model.task === "expression" ? "; faces are found first, then each is classified" : "";
  const trained = dataset(model) ? `trained on ${dataset(model)}; ` : "";
  const hint = HINTS[dataset(model)] ? `; ${HINTS[dataset(model)]}` : "";
  info.textContent = `${trained}${model.num_classes} classes, ${input.width}x${input.height} ` +
    `${input.channels === 1 ? "grey" : "RGB"} input, on ${model.provider}${faces}${hint}`;
  const isExpression = model.task === "expression";
  $("top-k").hidden = isExpression;
  $("top-k-label").hidden = isExpression;
  updateSubmit();
}

function updateSubmit() {
  $("submit").disabled = !(state.image && chosenModel());
}

function clearImage() {
  state.image = null;
  state.imageName = null;
  const preview = $("preview");
  if (preview.src) URL.revokeObjectURL(preview.src);
  preview.removeAttribute("src");
  preview.hidden = true;
}

function setImage(blob, name) {
  clearImage(); // a refused file must not leave the previous image to be run again
  clearOutput();
  if (!blob || !blob.type.startsWith("image/")) {
    showError(`${name || "that file"} is not an image: choose a photo (JPEG, PNG, WebP, ...)`);
    updateSubmit();
    return;
  }
  state.image = blob;
  state.imageName = name;
  const preview = $("preview");
  preview.onerror = () => { preview.hidden = true; }; // the service will say what is wrong
  preview.src = URL.createObjectURL(blob);
  preview.hidden = false;
  clearOutput();
  updateSubmit();
}

function bar(label, score, extra) {
  const item = document.createElement("li");
  item.className = "bar";
  item.dataset.label = label;
  item.dataset.score = String(score);
  const name = document.createElement("span");
  name.className = "bar-label";
  name.textContent = label;
  const track = document.createElement("span");
  track.className = "bar-track";
  const fill = document.createElement("span");
  fill.className = "bar-fill";
  fill.style.width = `${(score * 100).toFixed(1)}%`;
  track.append(fill);
  const value = document.createElement("span");
  value.className = "bar-score";
  value.textContent = `${(score * 100).toFixed(1)}%`;
  item.append(name, track, value);
  if (extra) item.append(extra);
  return item;
}

async function classify(model) {
  const form = new FormData();
  form.append("file", state.image, state.imageName || "image");
  const k = Math.max(1, Math.min(20, Number($("top-k").value) || 5));
  const url = `/v1/models/${encodeURIComponent(model.name)}/versions/${model.version}` +
    `/classify?top_k=${k}`;
  const response = await fetch(url, { method: "POST", body: form, headers: headers() });
  if (!response.ok) throw new Error(await errorMessage(response));
  const body = await response.json();
  const predictions = body.results[0].predictions;
  $("summary").textContent = `${body.model} v${body.version}: ${predictions[0].label}`;
  $("results").replaceChildren(...predictions.map((p) => bar(p.label, p.score)));
}

async function expressions(model) {
  const form = new FormData();
  form.append("file", state.image, state.imageName || "image");
  const url = `/v1/expressions?model=${encodeURIComponent(model.name)}` +
    `&version=${model.version}`;
  const response = await fetch(url, { method: "POST", body: form, headers: headers() });
  if (!response.ok) throw new Error(await errorMessage(response));
  const body = await response.json();
  await drawFaces(body);
  const n = body.faces.length;
  $("summary").textContent = n === 0 ? "no face found in this photo"
    : `${n} face${n === 1 ? "" : "s"}: ${body.faces.map((f) => f.expression).join(", ")}`;
  $("results").replaceChildren(...body.faces.map((face, i) => {
    const sorted = Object.entries(face.probabilities).sort((a, b) => b[1] - a[1]);
    const item = bar(`face ${i + 1}: ${face.expression}`, sorted[0][1]);
    item.classList.add("face");
    const details = document.createElement("ol");
    details.className = "face-bars";
    details.append(...sorted.slice(0, 3).map(([label, p]) => bar(label, p)));
    item.append(details);
    return item;
  }));
}

// The photo (as the browser orients it, like the service) with each face boxed and labelled.
async function drawFaces(body) {
  const bitmap = await createImageBitmap(state.image, { imageOrientation: "from-image" });
  const canvas = $("overlay");
  canvas.width = body.image.width;
  canvas.height = body.image.height;
  const ctx = canvas.getContext("2d");
  ctx.drawImage(bitmap, 0, 0, canvas.width, canvas.height);
  const line = Math.max(2, Math.round(canvas.width / 300));
  ctx.lineWidth = line;
  ctx.textBaseline = "bottom";
  body.faces.forEach((face, i) => {
    const { x, y, width, height } = face.box;
    const score = (face.probabilities[face.expression] * 100).toFixed(0);
    const text = `${i + 1} ${face.expression} ${score}%`;
    // About as wide as the box (neighbours' labels should not cover each other), 10 px at least.
    const size = Math.max(10, Math.min(canvas.width / 40, (1.3 * width) / (0.6 * text.length)));
    ctx.font = `bold ${Math.round(size)}px sans-serif`;
    ctx.strokeStyle = "#ffd400";
    ctx.strokeRect(x, y, width, height);
    const metrics = ctx.measureText(text);
    const pad = line * 2;
    const tall = Math.round(size * 1.2);
    const top = y > tall + pad ? y : y + height + tall + pad;
    ctx.fillStyle = "#ffd400";
    ctx.fillRect(x - line / 2, top - tall - pad, metrics.width + 2 * pad, tall + pad);
    ctx.fillStyle = "#000";
    ctx.fillText(text, x + pad, top - pad / 2);
  });
  canvas.hidden = false;
  $("preview").hidden = true; // the canvas shows the same photo, boxed
  canvas.dataset.faces = String(body.faces.length);
}

async function run(event) {
  event.preventDefault();
  const model = chosenModel();
  if (!model || !state.image) return;
  clearOutput();
  $("submit").disabled = true;
  $("output").setAttribute("aria-busy", "true");
  try {
    if (model.task === "expression") await expressions(model);
    else await classify(model);
  } catch (err) {
    showError(err.message);
  } finally {
    $("output").removeAttribute("aria-busy");
    updateSubmit();
  }
}

function setUpDropzone() {
  const zone = $("dropzone");
  zone.addEventListener("dragover", (e) => { e.preventDefault(); zone.classList.add("over"); });
  zone.addEventListener("dragleave", () => zone.classList.remove("over"));
  zone.addEventListener("drop", (e) => {
    e.preventDefault();
    zone.classList.remove("over");
    const file = e.dataTransfer.files[0];
    if (file) setImage(file, file.name);
  });
  $("file").addEventListener("change", (e) => {
    const file = e.target.files[0];
    if (file) setImage(file, file.name);
  });
}

function setUpCamera() {
  if (!(navigator.mediaDevices && navigator.mediaDevices.getUserMedia)) return;
  const start = $("camera-start");
  start.hidden = false;
  let stream = null;
  const stop = () => {
    live.stop();
    if (stream) stream.getTracks().forEach((t) => t.stop());
    stream = null;
    $("camera").hidden = true;
  };
  start.addEventListener("click", async () => {
    try {
      stream = await navigator.mediaDevices.getUserMedia({ video: true });
      $("video").srcObject = stream;
      $("camera").hidden = false;
    } catch (err) {
      showError(`the webcam is not available: ${err.message}`);
    }
  });
  $("camera-stop").addEventListener("click", stop);
  $("camera-live").addEventListener("click", () => (live.socket ? live.stop() : live.start()));
  $("camera-shoot").addEventListener("click", () => {
    const video = $("video");
    const canvas = document.createElement("canvas");
    canvas.width = video.videoWidth;
    canvas.height = video.videoHeight;
    canvas.getContext("2d").drawImage(video, 0, 0);
    canvas.toBlob((blob) => { setImage(blob, "webcam.jpg"); stop(); }, "image/jpeg", 0.92);
  });
}

// Live mode: webcam frames go to WebSocket /v1/expressions/stream, one in flight at a time
// (the next frame is sent when the answer to the last one arrives, so the page never floods
// the service); each answer's boxes, track ids and smoothed expressions are drawn over the
// frame it answers, with the answers per second.
const LIVE_WIDTH = 640; // frames are sent at most this wide
const live = {
  socket: null,
  answers: [], // arrival times of the answers of the last second, for the frame rate
  sent: null, // the canvas holding the frame in flight

  start() {
    const model = chosenModel();
    const params = new URLSearchParams();
    if (model && model.task === "expression") params.set("model", model.name);
    const key = $("api-key").value.trim();
    // Browsers cannot set headers on a WebSocket: the key goes in Sec-WebSocket-Protocol.
    const protocols = ["convserve.v1"];
    if (key) protocols.push(`convserve.bearer.${base64url(key)}`);
    const scheme = location.protocol === "https:" ? "wss" : "ws";
    const socket = new WebSocket(`${scheme}://${location.host}/v1/expressions/stream?${params}`,
                                 protocols);
    socket.binaryType = "arraybuffer";
    this.socket = socket;
    this.answers = [];
    $("camera-live").textContent = "stop live expressions";
    $("live").hidden = false;
    $("live-status").textContent = "connecting...";
    socket.onopen = () => this.send();
    socket.onmessage = (event) => this.answer(JSON.parse(event.data));
    socket.onclose = (event) => {
      if (this.socket === socket) this.stop();
      if (event.code !== 1000 && event.code !== 1005) {
        $("live-status").textContent = `the stream closed (${event.code}): ${event.reason}`;
      }
    };
  },

  stop() {
    const socket = this.socket;
    this.socket = null;
    if (socket && socket.readyState <= 1) socket.close(1000, "the page stopped the stream");
    $("camera-live").textContent = "live expressions";
    $("live-status").textContent = "";
  },

  send() {
    const video = $("video");
    if (!this.socket || this.socket.readyState !== 1) return;
    if (!video.videoWidth) { setTimeout(() => this.send(), 50); return; }
    const scale = Math.min(1, LIVE_WIDTH / video.videoWidth);
    const canvas = document.createElement("canvas");
    canvas.width = Math.round(video.videoWidth * scale);
    canvas.height = Math.round(video.videoHeight * scale);
    canvas.getContext("2d").drawImage(video, 0, 0, canvas.width, canvas.height);
    this.sent = canvas;
    canvas.toBlob(async (blob) => {
      if (this.socket && this.socket.readyState === 1) this.socket.send(await blob.arrayBuffer());
    }, "image/jpeg", 0.8);
  },

  answer(message) {
    if (message.error) { showError(message.error.message); return; }
    const now = performance.now();
    this.answers = this.answers.filter((t) => now - t < 1000).concat([now]);
    this.draw(message);
    this.send();
  },

  draw(message) {
    const canvas = $("live");
    const frame = this.sent;
    if (!frame) return;
    canvas.width = frame.width;
    canvas.height = frame.height;
    const ctx = canvas.getContext("2d");
    ctx.drawImage(frame, 0, 0);
    ctx.lineWidth = Math.max(2, frame.width / 250);
    ctx.font = `${Math.max(12, Math.round(frame.width / 40))}px sans-serif`;
    for (const face of message.faces) {
      const { x, y, width, height } = face.box;
      const score = (face.probabilities[face.expression] * 100).toFixed(0);
      ctx.strokeStyle = "#ffd400";
      ctx.strokeRect(x, y, width, height);
      const text = `#${face.id} ${face.expression} ${score}%`;
      const size = ctx.measureText(text);
      ctx.fillStyle = "#ffd400";
      ctx.fillRect(x, Math.max(0, y - 20), size.width + 8, 20);
      ctx.fillStyle = "#000";
      ctx.fillText(text, x + 4, Math.max(15, y - 5));
    }
    // What the page shows, readable by tests and assistive tools alike.
    canvas.dataset.frame = String(message.frame);
    canvas.dataset.ids = message.faces.map((f) => f.id).join(",");
    canvas.dataset.boxes = JSON.stringify(message.faces.map((f) => f.box));
    const faces = message.faces.map((f) => `#${f.id} ${f.expression}`).join(", ") || "no face";
    $("live-status").textContent = `${this.answers.length} frames/s, ` +
      `${message.timings_ms.total.toFixed(0)} ms a frame: ${faces}`;
  },
};

function base64url(text) {
  const bytes = new TextEncoder().encode(text);
  let binary = "";
  bytes.forEach((b) => { binary += String.fromCharCode(b); });
  return btoa(binary).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
}

async function start() {
  $("api-key").value = localStorage.getItem("convserve-api-key") || "";
  $("model").addEventListener("change", listVersions);
  $("version").addEventListener("change", describeModel);
  $("api-key").addEventListener("change", () => {
    showError("");  // the key changed: an error about the old one no longer holds
    loadModels().catch((e) => showError(e.message));
  });
  $("form").addEventListener("submit", run);
  setUpDropzone();
  setUpCamera();
  // Models load in the background after start-up: wait for /readyz (at most ~10 s: a model
  // that failed to load keeps it at 503, and the others still work), then list them.
  const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
  for (let i = 0; i < 5 && !(await checkReady()); i++) await sleep(2000);
  for (;;) {
    try {
      await loadModels();
      if (state.models.length) return;
    } catch (err) {
      showError(err.message);
    }
    await sleep(2000);
    await checkReady();
  }
}

document.addEventListener("DOMContentLoaded", start);
