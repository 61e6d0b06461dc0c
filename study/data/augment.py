"""Ranges of the on-the-fly augmentation (TF-free, so the config and --help stay light).

The tf.data implementation is :func:`study.search.pipeline.augment_batch`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass


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
    noise_std: float = 0.0  # Gaussian noise std; off by default: it halves pipeline speed
    blur_prob: float = 0.0  # probability of a 3x3 box blur per image (0 = off)

    def to_dict(self) -> dict:
        return asdict(self)
