"""Ranges of the on-the-fly augmentation (TF-free, so the config and --help stay light).

The tf.data implementation is :func:`study.search.pipeline.augment_batch`. Two presets
form the closed set the search chooses from (:data:`AUGMENTATIONS`): ``standard``
(positioning and mild exposure changes) and ``domain`` (domain randomisation: the
wide photometric range of other hospitals' devices, so features cannot lean on one
device's look).
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
    sharpen_prob: float = 0.0  # probability of an unsharp mask per image
    lowres_prob: float = 0.0  # probability of a down-and-up resize (a coarser detector)
    lowres_min: float = 0.4  # the smallest downscale factor of a resolution drop
    jpeg_prob: float = 0.0  # probability of JPEG re-compression per batch (quality 30-90)
    clahe_prob: float = 0.0  # probability of CLAHE with a random clip limit (1-4) per image

    def to_dict(self) -> dict:
        return asdict(self)


STANDARD = AugmentConfig()
DOMAIN = AugmentConfig(
    rotation_deg=10.0,
    shift=0.08,
    zoom=0.20,
    brightness=0.20,
    contrast=0.50,
    gamma=0.60,
    noise_std=0.03,
    blur_prob=0.25,
    sharpen_prob=0.25,
    lowres_prob=0.30,
    jpeg_prob=0.30,
    clahe_prob=0.25,
)
#: The augmentation presets a search chooses from, by name (hyperparameter ``augment``).
AUGMENTATIONS: dict[str, AugmentConfig] = {"standard": STANDARD, "domain": DOMAIN}
AUGMENT_NAMES: tuple[str, ...] = tuple(AUGMENTATIONS)
