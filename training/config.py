"""The training configuration: dataclasses with a comment per field, loaded from YAML.

A run is described by one :class:`TrainConfig`, read from ``training/configs/*.yaml`` and
overridden from the command line with ``--set section.key=value`` (the value is parsed as YAML:
``--set optim.lr=0.05``, ``--set finetune.pretrained=true``, ``--set data.path=/data/fer.csv``).
Unknown keys and wrong types fail with a message listing the valid keys. The resolved config is
saved as ``config.yaml`` next to every checkpoint and inside it.
"""

from __future__ import annotations

import dataclasses
import logging
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from model_format import INTERPOLATIONS, RESIZE_METHODS
from training.errors import ConfigError

CONFIG_DIR = Path(__file__).parent / "configs"
logger = logging.getLogger(__name__)


@dataclass
class ModelConfig:
    name: str = "lenet5"  # registry name (python -m training models lists them)
    height: int = 28  # model input height in pixels (the exported graph's H)
    width: int = 28  # model input width in pixels (W)
    in_channels: int = 1  # channels the network itself takes (3 for ImageNet backbones)
    kwargs: dict[str, Any] = field(default_factory=dict)  # extra builder keyword arguments


@dataclass
class DataConfig:
    name: str = "mnist"  # mnist | fashion-mnist | fer2013 | folder
    path: str | None = None  # CSV (fer2013) or folder (folder); optional for (fashion-)mnist
    channels: int = 1  # channels of the exported graph's input (1 grey, 3 RGB)
    train_split: str = "train"  # split trained on (never a test split)
    val_split: str | None = None  # split evaluated after every epoch (None: test_split,
    # logged as test_* and drawn as "test (no validation split)")
    test_split: str = "test"  # held-out split for the final metrics, plots and model.json
    train_limit: int | None = None  # use only the first N training images (quick runs)
    eval_limit: int | None = None  # use only the first N val/test images (quick runs)
    resize_method: str = "stretch"  # stretch | shorter-side-center-crop (eval and service)
    shorter_side: int | None = None  # for shorter-side-center-crop (default: max(H, W))
    interpolation: str = "bilinear"  # bilinear | bicubic | nearest | area
    crop: str = "random"  # training crop: random (pad + crop) | resized | none
    padding: int = 2  # zero padding of the random crop, in pixels
    scale: list[float] = field(default_factory=lambda: [0.5, 1.0])  # resized-crop area range
    hflip_prob: float = 0.0  # horizontal flip probability (0 for digits)
    rotation: float = 0.0  # maximum random rotation in degrees
    normalization: str = "fit"  # fit: mean/std of the training set | imagenet: ImageNet's |
    # pretrained: what the model's pretrained weights expect (its PretrainedCfg, e.g. (x-127)/128
    # for efficientnet_lite0)
    whitening: str = "none"  # none | pca | zca, fitted on the training set
    whitening_epsilon: float = 0.1  # added to eigenvalues before whitening (damps noise)
    stats_images: int = 20000  # training images used to fit mean/std/whitening


@dataclass
class OptimConfig:
    epochs: int = 10  # passes over the training set
    batch_size: int = 128  # per process
    lr: float = 0.05  # peak learning rate (for every group unless finetune says otherwise)
    momentum: float = 0.9  # SGD momentum
    nesterov: bool = True  # Nesterov momentum
    weight_decay: float = 5e-4  # L2 decay, never applied to 1-D parameters (biases, norms)
    label_smoothing: float = 0.0  # cross-entropy label smoothing
    schedule: str = "cosine"  # cosine | step (per iteration, after warm-up)
    step_epochs: int = 10  # step schedule: multiply the lr by gamma every this many epochs
    gamma: float = 0.1  # step schedule factor
    warmup_epochs: float = 0.0  # linear warm-up from 0 (may be fractional)
    min_lr_ratio: float = 0.0  # cosine floor as a fraction of the peak lr


@dataclass
class FinetuneConfig:
    pretrained: bool = False  # start from the model's pretrained weights (new head)
    head_lr: float | None = None  # lr of the new head (None: optim.lr)
    backbone_lr: float | None = None  # lr of reused layers (None: optim.lr * backbone_lr_scale)
    backbone_lr_scale: float = 1.0  # used when backbone_lr is None
    freeze_backbone_epochs: int = 0  # train only the head for the first N epochs


@dataclass
class ExportConfig:
    name: str | None = None  # models/<name>/ (lower-case, digits, -)
    version: int = 1  # models/<name>/<version>/
    task: str = "classification"  # classification | expression
    labels: list[str] | None = None  # class names (None: the data set's)


@dataclass
class TrainConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    export: ExportConfig = field(default_factory=ExportConfig)
    seed: int = 0  # seeds python, numpy, torch and the data order
    workers: int = 0  # DataLoader worker processes
    output_dir: str = "runs/default"  # checkpoints, config.yaml, log.jsonl, plots
    device: str = "auto"  # auto (cuda if available) | cpu | cuda
    checkpoint_every: int = 1  # save a checkpoint every N epochs (and after the last)

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict (YAML/JSON-serialisable)."""
        return dataclasses.asdict(self)

    def save(self, path: str | Path) -> None:
        """Write the resolved config as YAML."""
        Path(path).write_text(yaml.safe_dump(self.to_dict(), sort_keys=False))


# What `python -m training finetune` adds under the config (the config may override it).
FINETUNE_DEFAULTS: dict[str, Any] = {"finetune": {"pretrained": True, "backbone_lr_scale": 0.1}}

_CHOICES = {
    "data.name": ("mnist", "fashion-mnist", "fer2013", "folder"),
    "data.resize_method": RESIZE_METHODS,
    "data.interpolation": INTERPOLATIONS,
    "data.crop": ("random", "resized", "none"),
    "data.normalization": ("fit", "imagenet", "pretrained"),
    "data.whitening": ("none", "pca", "zca"),
    "data.channels": (1, 3),
    "model.in_channels": (1, 3),
    "optim.schedule": ("cosine", "step"),
    "device": ("auto", "cpu", "cuda"),
    "export.task": ("classification", "expression"),
}


def _matches(value: Any, hint: Any) -> bool:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_matches(value, arg) for arg in typing.get_args(hint))
    if hint is type(None):
        return value is None
    if hint is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if origin is not None:
        return isinstance(value, origin)
    return isinstance(value, hint)


def _build(cls: type, values: dict[str, Any], prefix: str) -> Any:
    if not isinstance(values, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'} must be a mapping, got {values!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in values.items():
        if key not in names:
            raise ConfigError(f"unknown config key '{prefix}{key}'; valid keys under "
                              f"{prefix.rstrip('.') or 'the top level'}: {', '.join(names)}")
        hint = hints[key]
        if isinstance(hint, type) and dataclasses.is_dataclass(hint):
            kwargs[key] = _build(hint, value, f"{prefix}{key}.")
            continue
        is_int = isinstance(value, int) and not isinstance(value, bool)
        if is_int and (hint is float or float in typing.get_args(hint)):
            value = float(value)
        if not _matches(value, hint):
            raise ConfigError(f"{prefix}{key} must be {_describe(hint)}, got {value!r}")
        choices = _CHOICES.get(prefix + key)
        if choices and value not in choices:
            raise ConfigError(f"{prefix}{key} must be one of {', '.join(map(str, choices))}; "
                              f"got {value!r}")
        kwargs[key] = value
    return cls(**kwargs)


def _describe(hint: Any) -> str:
    return str(hint).replace("typing.", "").replace("<class '", "").replace("'>", "")


def from_dict(values: dict[str, Any]) -> TrainConfig:
    """Build and validate a :class:`TrainConfig` from a nested dict.

    Raises:
        ConfigError: unknown key, wrong type or invalid value.
    """
    config = _build(TrainConfig, values or {}, "")
    _validate(config)
    return config


def _validate(config: TrainConfig) -> None:
    checks = [
        (config.optim.epochs >= 1, "optim.epochs must be at least 1"),
        (config.optim.batch_size >= 1, "optim.batch_size must be at least 1"),
        (config.optim.lr > 0, "optim.lr must be positive"),
        (0 <= config.optim.label_smoothing < 1, "optim.label_smoothing must be in [0, 1)"),
        (config.model.height >= 1 and config.model.width >= 1, "model.height/width must be >= 1"),
        (config.data.channels in (1, config.model.in_channels),
         "data.channels must be 1 (grey, repeated for an RGB model) or equal model.in_channels"),
        (config.data.name not in ("fer2013", "folder") or bool(config.data.path),
         f"data set {config.data.name} needs its location: --set data.path=/path/to/it"),
        (config.data.train_split != config.data.test_split,
         "data.train_split must differ from data.test_split: never train on the test set"),
        (config.optim.warmup_epochs >= 0, "optim.warmup_epochs must not be negative"),
        (config.finetune.freeze_backbone_epochs >= 0,
         "finetune.freeze_backbone_epochs must not be negative"),
    ]
    for ok, message in checks:
        if not ok:
            raise ConfigError(message)
    _clamp_to_epochs(config)


def _clamp_to_epochs(config: TrainConfig) -> None:
    """Fit warm-up and freezing into a shorter run (``--set optim.epochs=1`` for a quick try)
    instead of refusing it; each change is logged and lands in the resolved ``config.yaml``."""
    optim, finetune = config.optim, config.finetune
    if optim.warmup_epochs > optim.epochs:
        logger.warning("optim.warmup_epochs %g is more than optim.epochs %d: clamped to %d "
                       "(the lr warms up over the whole run)", optim.warmup_epochs,
                       optim.epochs, optim.epochs)
        optim.warmup_epochs = float(optim.epochs)
    if finetune.freeze_backbone_epochs >= optim.epochs:
        clamped = optim.epochs - 1
        logger.warning("finetune.freeze_backbone_epochs %d leaves no epoch of optim.epochs %d "
                       "to train the backbone: clamped to %d", finetune.freeze_backbone_epochs,
                       optim.epochs, clamped)
        finetune.freeze_backbone_epochs = clamped


def parse_overrides(pairs: list[str]) -> dict[str, Any]:
    """Turn ``["optim.lr=0.1", "data.path=x.csv"]`` into a nested dict (values parsed as YAML)."""
    nested: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set expects key=value (e.g. optim.lr=0.1), got {pair!r}")
        try:
            value = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError as error:
            raise ConfigError(f"--set {pair}: the value is not valid YAML ({error})") from None
        parts = key.strip().split(".")
        node = nested
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"--set {pair}: {part} is set both as a value and a section")
        node[parts[-1]] = value
    return nested


def merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """Recursively merge ``override`` into a copy of ``base`` (mappings merge, the rest replace).

    ``model.kwargs`` merges too, so ``--set model.kwargs.dropout=0.2`` adds one keyword.
    """
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def resolve_config_path(path: str | Path) -> Path:
    """``path`` as given, or a name under ``training/configs/`` (with or without ``.yaml``)."""
    candidate = Path(path)
    for option in (candidate, CONFIG_DIR / candidate, CONFIG_DIR / f"{candidate}.yaml"):
        if option.is_file():
            return option
    names = ", ".join(sorted(p.stem for p in CONFIG_DIR.glob("*.yaml")))
    raise ConfigError(f"config file {path} not found; shipped configs: {names}")


def load_config(path: str | Path | None = None, overrides: list[str] | None = None,
                defaults: dict[str, Any] | None = None) -> TrainConfig:
    """Defaults, then the YAML file, then ``--set`` overrides; validated.

    Args:
        path: YAML file, or the name of one in ``training/configs/``; None: defaults only.
        overrides: ``key=value`` strings with dotted keys.
        defaults: Applied before the file (e.g. the ``finetune`` subcommand's).
    """
    values: dict[str, Any] = dict(defaults or {})
    if path is not None:
        resolved = resolve_config_path(path)
        try:
            loaded = yaml.safe_load(resolved.read_text()) or {}
        except yaml.YAMLError as error:
            raise ConfigError(f"{resolved} is not valid YAML: {error}") from None
        values = merge(values, loaded)
    values = merge(values, parse_overrides(overrides or []))
    return from_dict(values)
