"""tf.data pipelines over the preprocessed cache.

Train: the minority class is oversampled to a balanced (~1:1) stream, and
every batch gets random geometric and photometric augmentation. All
randomness is stateless and derived from ``(seed, batch number)``, so the
same seed gives the same batches. Validation and test are deterministic:
no augmentation, no oversampling.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
import tensorflow as tf

from study.preprocess import scale


@dataclass(frozen=True)
class AugmentConfig:
    """Ranges of the on-the-fly augmentation; they model the exposure and positioning
    differences between devices (the official test split differs from train in both)."""

    rotation_deg: float = 8.0
    shift: float = 0.06  # fraction of the image side
    zoom: float = 0.10  # +-10 %
    brightness: float = 0.10  # additive, on [0, 1] images
    contrast: float = 0.25  # multiplicative around the mean: [1-c, 1+c]
    gamma: float = 0.30  # gamma in [1-g, 1+g]
    noise_std: float = 0.02  # Gaussian noise std (0 = off)
    blur_prob: float = 0.0  # probability of a 3x3 box blur per image (0 = off)

    def to_dict(self) -> dict:
        return asdict(self)


def _affine_matrices(batch: int, size: int, cfg: AugmentConfig, seeds: tf.Tensor) -> tf.Tensor:
    """Per-image output->input transforms (rotation and zoom around the centre, plus shift)."""
    angle = tf.random.stateless_uniform([batch], seeds[0], -cfg.rotation_deg, cfg.rotation_deg)
    angle = angle * (math.pi / 180.0)
    zoom = tf.random.stateless_uniform([batch], seeds[1], 1 - cfg.zoom, 1 + cfg.zoom)
    shift = tf.random.stateless_uniform([batch, 2], seeds[2], -cfg.shift, cfg.shift) * size
    c = (size - 1) / 2.0
    cos, sin = tf.cos(angle) / zoom, tf.sin(angle) / zoom
    a2 = c - cos * c + sin * c + shift[:, 0]
    b2 = c - sin * c - cos * c + shift[:, 1]
    zeros = tf.zeros([batch])
    return tf.stack([cos, -sin, a2, sin, cos, b2, zeros, zeros], axis=1)


def augment_batch(images: tf.Tensor, seed: tf.Tensor, cfg: AugmentConfig) -> tf.Tensor:
    """Augment a float (B, S, S, 1) batch in [0, 1] deterministically from ``seed`` (shape [2])."""
    batch, size = tf.shape(images)[0], images.shape[1]
    seeds = tf.random.experimental.stateless_split(seed, num=8)
    x = tf.raw_ops.ImageProjectiveTransformV3(
        images=images,
        transforms=_affine_matrices(batch, size, cfg, seeds),
        output_shape=tf.shape(images)[1:3],
        fill_value=0.0,
        interpolation="BILINEAR",
        fill_mode="NEAREST",
    )
    per_image = [batch, 1, 1, 1]
    gamma = tf.random.stateless_uniform(per_image, seeds[3], 1 - cfg.gamma, 1 + cfg.gamma)
    x = tf.pow(tf.clip_by_value(x, 1e-6, 1.0), gamma)
    mean = tf.reduce_mean(x, axis=[1, 2, 3], keepdims=True)
    contrast = tf.random.stateless_uniform(per_image, seeds[4], 1 - cfg.contrast, 1 + cfg.contrast)
    x = (x - mean) * contrast + mean
    x = x + tf.random.stateless_uniform(per_image, seeds[5], -cfg.brightness, cfg.brightness)
    if cfg.noise_std > 0:
        x = x + tf.random.stateless_normal(tf.shape(x), seeds[6], stddev=cfg.noise_std)
    if cfg.blur_prob > 0:
        blurred = tf.nn.avg_pool2d(x, 3, 1, "SAME")
        pick = tf.random.stateless_uniform(per_image, seeds[7]) < cfg.blur_prob
        x = tf.where(pick, blurred, x)
    return tf.clip_by_value(x, 0.0, 1.0)


def _to_input(images: tf.Tensor) -> tf.Tensor:
    return scale(images)[..., None]


def train_dataset(
    images: np.ndarray,
    labels: np.ndarray,
    batch_size: int,
    seed: int,
    augment: AugmentConfig | None = AugmentConfig(),
) -> tf.data.Dataset:
    """An endless, class-balanced, augmented stream of (x, y) batches."""
    labels = np.asarray(labels, np.float32)
    per_class = []
    for c in (0, 1):
        idx = np.flatnonzero(labels == c)
        if len(idx) == 0:
            raise ValueError(f"class {c} has no training images: cannot balance the stream")
        ds = tf.data.Dataset.from_tensor_slices((images[idx], labels[idx]))
        per_class.append(
            ds.shuffle(len(idx), seed=seed + c, reshuffle_each_iteration=True).repeat()
        )
    ds = tf.data.Dataset.sample_from_datasets(per_class, weights=[0.5, 0.5], seed=seed)
    ds = ds.batch(batch_size, drop_remainder=True)
    ds = tf.data.Dataset.zip(ds, tf.data.Dataset.counter())

    def _map(batch, step):
        x, y = batch
        x = _to_input(x)
        if augment is not None:
            x = augment_batch(x, tf.stack([tf.cast(seed, tf.int64), step]), augment)
        return x, y[:, None]

    return ds.map(_map, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)


def eval_dataset(images: np.ndarray, labels: np.ndarray, batch_size: int) -> tf.data.Dataset:
    """Deterministic batches in file order: no augmentation, no oversampling."""
    labels = np.asarray(labels, np.float32)[:, None]
    ds = tf.data.Dataset.from_tensor_slices((images, labels)).batch(batch_size)
    return ds.map(lambda x, y: (_to_input(x), y)).prefetch(tf.data.AUTOTUNE)


def steps_per_epoch(n_train: int, batch_size: int) -> int:
    """One epoch = as many images as the training split holds (the stream is endless)."""
    return max(1, n_train // batch_size)
