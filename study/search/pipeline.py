"""tf.data pipelines over the preprocessed cache.

Train: every batch is half NORMAL, half PNEUMONIA (the minority class is
oversampled), and gets random geometric and photometric augmentation. All
randomness is stateless and derived from ``(seed, batch number)``, so the
same seed gives the same batches. Validation and test are deterministic:
no augmentation, no oversampling.
"""

from __future__ import annotations

import math

import numpy as np
import tensorflow as tf

from study.data.augment import AugmentConfig
from study.data.preprocess import PreprocessConfig, normalise, scale

DEFAULT_AUGMENT = AugmentConfig()


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
    seeds = tf.random.experimental.stateless_split(seed, num=12)
    x = tf.raw_ops.ImageProjectiveTransformV3(
        images=images,
        transforms=_affine_matrices(batch, size, cfg, seeds),
        output_shape=tf.shape(images)[1:3],
        fill_value=0.0,
        interpolation="BILINEAR",
        fill_mode="CONSTANT",  # black, like the X-ray's own borders; 2x faster than NEAREST
    )
    x = _photometric(x, batch, cfg, seeds[3:6])
    x = _detector(x, batch, size, cfg, seeds[6:12])
    # Resizes and JPEG lose the static shape; models need it (e.g. space-to-depth stems).
    return tf.ensure_shape(tf.clip_by_value(x, 0.0, 1.0), images.shape)


def _photometric(x: tf.Tensor, batch: tf.Tensor, cfg: AugmentConfig, seeds: tf.Tensor) -> tf.Tensor:
    """Exposure (gamma), contrast around the mean and brightness, each per image."""
    per_image = [batch, 1, 1, 1]
    gamma = tf.random.stateless_uniform(per_image, seeds[0], 1 - cfg.gamma, 1 + cfg.gamma)
    x = tf.pow(tf.clip_by_value(x, 1e-6, 1.0), gamma)
    mean = tf.reduce_mean(x, axis=[1, 2, 3], keepdims=True)
    contrast = tf.random.stateless_uniform(per_image, seeds[1], 1 - cfg.contrast, 1 + cfg.contrast)
    x = (x - mean) * contrast + mean
    return x + tf.random.stateless_uniform(per_image, seeds[2], -cfg.brightness, cfg.brightness)


def _where(prob: float, seed: tf.Tensor, batch: tf.Tensor, new: tf.Tensor, old: tf.Tensor):
    """``new`` for a random ``prob`` share of the images, ``old`` for the rest."""
    pick = tf.random.stateless_uniform([batch, 1, 1, 1], seed) < prob
    return tf.where(pick, new, old)


def _detector(
    x: tf.Tensor, batch: tf.Tensor, size: int, cfg: AugmentConfig, seeds: tf.Tensor
) -> tf.Tensor:
    """What another device's detector and software do: noise, blur or sharpening, a
    coarser resolution, JPEG re-compression. Each is off when its setting is 0."""
    if cfg.noise_std > 0:
        x = x + tf.random.stateless_normal(tf.shape(x), seeds[0], stddev=cfg.noise_std)
    if cfg.blur_prob > 0:
        x = _where(cfg.blur_prob, seeds[1], batch, tf.nn.avg_pool2d(x, 3, 1, "SAME"), x)
    if cfg.sharpen_prob > 0:
        sharp = x + (x - tf.nn.avg_pool2d(x, 3, 1, "SAME"))  # unsharp mask, amount 1
        x = _where(cfg.sharpen_prob, seeds[2], batch, sharp, x)
    if cfg.lowres_prob > 0:
        factor = tf.random.stateless_uniform([], seeds[3], cfg.lowres_min, 1.0)
        small = tf.cast(tf.round(factor * size), tf.int32)
        coarse = tf.image.resize(tf.image.resize(x, [small, small], "area"), [size, size])
        x = _where(cfg.lowres_prob, seeds[4], batch, coarse, x)
    if cfg.jpeg_prob > 0:
        x = _jpeg(tf.clip_by_value(x, 0.0, 1.0), cfg.jpeg_prob, seeds[5])
    if cfg.clahe_prob > 0:
        x = _random_clahe(tf.clip_by_value(x, 0.0, 1.0), batch, cfg.clahe_prob, seeds[0])
    return x


def _clahe_images(batch: np.ndarray, clips: np.ndarray, picks: np.ndarray) -> np.ndarray:
    """CLAHE on the picked images, each with its own clip limit, through the one
    preprocessing module's ``normalise`` (TensorFlow has no CLAHE kernel)."""
    out = batch.copy()
    for i in np.flatnonzero(picks):
        cfg = PreprocessConfig(normalise="clahe", clahe_clip=float(clips[i]))
        u8 = np.round(np.clip(batch[i, ..., 0], 0.0, 1.0) * 255).astype(np.uint8)
        out[i, ..., 0] = normalise(u8, cfg).astype(np.float32) / 255.0
    return out


def _random_clahe(x: tf.Tensor, batch: tf.Tensor, prob: float, seed: tf.Tensor) -> tf.Tensor:
    """Random local contrast equalisation: CLAHE (clip 1-4) on a ``prob`` share of images."""
    s = tf.random.experimental.stateless_split(tf.stack([seed[1], seed[0]]), num=2)
    clips = tf.random.stateless_uniform([batch], s[0], 1.0, 4.0)
    picks = tf.random.stateless_uniform([batch], s[1]) < prob
    y = tf.numpy_function(_clahe_images, [x, clips, picks], tf.float32, stateful=False)
    return tf.ensure_shape(y, x.shape)


def _jpeg(x: tf.Tensor, prob: float, seed: tf.Tensor) -> tf.Tensor:
    """JPEG re-compression of the whole batch (one random quality in 30-90) with ``prob``."""
    s = tf.random.experimental.stateless_split(seed, num=2)
    quality = tf.random.stateless_uniform([], s[0], 30, 91, tf.int32)

    def compress() -> tf.Tensor:
        return tf.map_fn(lambda im: tf.image.adjust_jpeg_quality(im, quality), x)

    return tf.cond(tf.random.stateless_uniform([], s[1]) < prob, compress, lambda: x)


def _to_input(images: tf.Tensor) -> tf.Tensor:
    return scale(images)[..., None]


def train_dataset(
    images: np.ndarray,
    labels: np.ndarray,
    batch_size: int,
    seed: int,
    augment: AugmentConfig | None = DEFAULT_AUGMENT,
) -> tf.data.Dataset:
    """An endless, class-balanced, augmented stream of (x, y) batches.

    Each batch draws half its images from each class (sampling with replacement, so
    the minority class is oversampled) and is built with whole-batch gathers: no
    per-image Python or tf.data overhead, so the stream outruns training.
    """
    labels = np.asarray(labels)
    by_class = []
    for c in (0, 1):
        idx = np.flatnonzero(labels == c)
        if len(idx) == 0:
            raise ValueError(f"class {c} has no training images: cannot balance the stream")
        by_class.append(tf.constant(idx, tf.int32))
    pool = tf.constant(images)
    n0 = batch_size // 2
    counts = (n0, batch_size - n0)
    y_batch = tf.constant([0.0] * counts[0] + [1.0] * counts[1], tf.float32)

    def make_batch(step: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        seeds = tf.random.experimental.stateless_split(
            tf.stack([tf.constant(seed, tf.int64), step]), num=4
        )
        picks = [
            tf.gather(ids, tf.random.stateless_uniform([n], s, 0, tf.size(ids), tf.int32))
            for ids, n, s in zip(by_class, counts, (seeds[0], seeds[1]), strict=True)
        ]
        order = tf.argsort(tf.random.stateless_uniform([batch_size], seeds[2]))
        chosen = tf.gather(tf.concat(picks, 0), order)
        x = _to_input(tf.gather(pool, chosen))
        if augment is not None:
            x = augment_batch(x, seeds[3], augment)
        return x, tf.gather(y_batch, order)[:, None]

    ds = tf.data.Dataset.counter().map(make_batch, num_parallel_calls=tf.data.AUTOTUNE)
    return ds.prefetch(tf.data.AUTOTUNE)


def eval_dataset(images: np.ndarray, labels: np.ndarray, batch_size: int) -> tf.data.Dataset:
    """Deterministic batches in file order: no augmentation, no oversampling."""
    labels = np.asarray(labels, np.float32)[:, None]
    ds = tf.data.Dataset.from_tensor_slices((images, labels)).batch(batch_size)
    return ds.map(lambda x, y: (_to_input(x), y)).prefetch(tf.data.AUTOTUNE)


def steps_per_epoch(n_train: int, batch_size: int) -> int:
    """One epoch = as many images as the training split holds (the stream is endless)."""
    return max(1, n_train // batch_size)
