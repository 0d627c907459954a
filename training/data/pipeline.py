"""From a :class:`~training.config.TrainConfig` to presets, fitted preprocessing and loaders."""

from __future__ import annotations

import logging

import torch
from torch.utils.data import DataLoader, DistributedSampler, RandomSampler, Sampler

from training.config import TrainConfig
from training.data import ImageDataset, build_dataset, dataset_labels
from training.data.preprocessing import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    Preprocessing,
    fit_preprocessing,
)
from training.data.presets import EvalPreset, TrainPreset
from training.errors import ConfigError

logger = logging.getLogger(__name__)

PCA_WARNING = (
    "data.whitening=pca: PCA whitening is not meant for convolutional networks. It replaces each "
    "image by its coefficients on the principal axes, written back onto the image grid in "
    "eigenvalue order, so neighbouring values are no longer neighbouring pixels and the spatial "
    "structure convolutions and pooling rely on is gone. Use data.whitening=zca (the same "
    "decorrelation rotated back to pixel space) or none; pca remains for comparison and for "
    "models that read the input as a flat vector")


def eval_preset(config: TrainConfig) -> EvalPreset:
    """The deterministic preset for evaluation and export (its resize goes to model.json)."""
    data, model = config.data, config.model
    return EvalPreset(height=model.height, width=model.width, channels=data.channels,
                      resize_method=data.resize_method, shorter_side=data.shorter_side,
                      interpolation=data.interpolation)


def train_preset(config: TrainConfig) -> TrainPreset:
    """The augmenting preset for training."""
    data, model = config.data, config.model
    if len(data.scale) != 2:
        raise ConfigError(f"data.scale is the crop's area range [min, max], got {data.scale}")
    return TrainPreset(height=model.height, width=model.width, channels=data.channels,
                       crop=data.crop, padding=data.padding, scale=(data.scale[0], data.scale[1]),
                       hflip_prob=data.hflip_prob, rotation=data.rotation,
                       interpolation=data.interpolation)


def build_split(config: TrainConfig, split: str, *, train: bool) -> ImageDataset:
    """One split with the train or eval preset applied."""
    data = config.data
    limit = data.train_limit if train else data.eval_limit
    transform = train_preset(config) if train else eval_preset(config)
    return build_dataset(data.name, split, path=data.path, transform=transform, limit=limit)


def fit_from_config(config: TrainConfig, train_set: ImageDataset) -> Preprocessing:
    """Normalisation (and whitening) for the model: ImageNet's, or fitted on ``train_set``.

    Statistics are fitted on the training images after the *eval* preset (the size and
    channels the model sees, without augmentation). PCA whitening logs :data:`PCA_WARNING`.
    """
    data = config.data
    if data.whitening == "pca":
        logger.warning(PCA_WARNING)
    grey_to_rgb = data.channels == 1 and config.model.in_channels == 3
    whitening = None if data.whitening == "none" else data.whitening
    if data.normalization in ("imagenet", "pretrained"):
        if whitening or config.model.in_channels != 3:
            raise ConfigError(f"data.normalization={data.normalization} needs "
                             "model.in_channels=3 and data.whitening=none")
        if data.normalization == "pretrained":
            from training.models.backbones import pretrained_cfg

            cfg = pretrained_cfg(config.model.name)
            return Preprocessing(mean=list(cfg.mean), std=list(cfg.std), grey_to_rgb=grey_to_rgb)
        return Preprocessing(mean=list(IMAGENET_MEAN), std=list(IMAGENET_STD),
                             grey_to_rgb=grey_to_rgb)
    if whitening and grey_to_rgb:
        raise ConfigError("whitening a grey input repeated to RGB is not supported; use "
                         "model.in_channels=1 or data.whitening=none")
    preset = eval_preset(config)
    count = min(len(train_set), data.stats_images)
    order = torch.randperm(len(train_set), generator=torch.Generator().manual_seed(config.seed))
    images = torch.stack([
        (preset(train_set.image(int(i))) * 255).round().to(torch.uint8) for i in order[:count]
    ])
    prep = fit_preprocessing(images, whitening=whitening, epsilon=data.whitening_epsilon,
                             max_images=None)
    if grey_to_rgb:
        prep.mean, prep.std, prep.grey_to_rgb = prep.mean * 3, prep.std * 3, True
    return prep


def train_loader(config: TrainConfig, dataset: ImageDataset, epoch: int, *,
                 distributed: bool = False) -> DataLoader:
    """The loader of one training epoch; its order depends only on (seed, epoch).

    Built afresh each epoch from a generator seeded with ``seed`` and ``epoch`` (and a
    :class:`DistributedSampler` under DDP), so a run resumed at an epoch boundary sees exactly
    the batches an uninterrupted run sees; worker seeds derive from the same generator.
    """
    generator = torch.Generator().manual_seed(config.seed * 100_003 + epoch)
    sampler: Sampler[int]
    if distributed:
        sampler = DistributedSampler(dataset, shuffle=True, seed=config.seed, drop_last=True)
        sampler.set_epoch(epoch)
    else:
        sampler = RandomSampler(dataset, generator=generator)
    return DataLoader(dataset, batch_size=config.optim.batch_size, sampler=sampler,
                      num_workers=config.workers, drop_last=len(dataset) > config.optim.batch_size,
                      generator=generator, persistent_workers=False)


def eval_loader(config: TrainConfig, dataset: ImageDataset) -> DataLoader:
    """A sequential loader over a whole evaluation split."""
    return DataLoader(dataset, batch_size=max(config.optim.batch_size, 256), shuffle=False,
                      num_workers=config.workers)


DATASET_NAMES = {"mnist": "MNIST", "fashion-mnist": "Fashion-MNIST", "fer2013": "FER2013",
                 "folder": "image folder"}  # as model.json's metrics name them


def run_labels(config: TrainConfig) -> list[str]:
    """Class names: ``export.labels`` or the data set's (their counts must agree)."""
    labels = dataset_labels(config.data.name, config.data.path)
    if config.export.labels is not None:
        if len(config.export.labels) != len(labels):
            raise ConfigError(f"export.labels has {len(config.export.labels)} names but the data "
                             f"set has {len(labels)} classes: {labels}")
        return list(config.export.labels)
    return list(labels)
