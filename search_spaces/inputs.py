"""What a trial's input looks like: image size, exposure normalisation, augmentation.

These are hyperparameters of every family (issue: features learned at one size through
one normalisation did not carry over to another hospital's devices). Each choice is a
preprocessing config whose image cache the search stage builds the first time a trial
asks for it. A list of one value is recorded as a fixed hyperparameter, so ``--image-size
64 --normalise clahe --augment standard`` gives every trial today's single input.

TensorFlow-free: Keras-Tuner's HyperParameters only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

#: CLAHE clip limits searched when ``normalise`` is ``clahe`` (2 is OpenCV's usual value).
CLAHE_CLIPS: tuple[float, ...] = (2.0, 4.0)


@dataclass(frozen=True)
class InputSpace:
    """The input choices a search may make; one value each = a fixed input."""

    image_sizes: tuple[int, ...]
    normalise: tuple[str, ...]
    augment: tuple[str, ...]
    clahe_clips: tuple[float, ...] = CLAHE_CLIPS

    @classmethod
    def fixed(cls, image_size: int) -> InputSpace:
        """One input for every trial (tests, benchmarks, a hypermodel built on its own)."""
        return cls((int(image_size),), ("clahe",), ("standard",), (CLAHE_CLIPS[0],))


@dataclass(frozen=True)
class InputChoice:
    """One trial's input: what the cache is keyed by and which augmentation it trains with."""

    image_size: int
    normalise: str
    clahe_clip: float
    augment: str


def _choice(hp: Any, name: str, values: tuple) -> Any:
    """A searched choice, or a fixed hyperparameter when there is nothing to choose."""
    if len(values) == 1:
        return hp.Fixed(name, values[0])
    return hp.Choice(name, list(values))


def declare_inputs(hp: Any, space: InputSpace) -> InputChoice:
    """Register (or read) the input hyperparameters; the clip limit only under CLAHE."""
    size = int(_choice(hp, "image_size", space.image_sizes))
    normalise = str(_choice(hp, "normalise", space.normalise))
    clip = space.clahe_clips[0]
    if "clahe" in space.normalise:
        with hp.conditional_scope("normalise", ["clahe"]):
            picked = _choice(hp, "clahe_clip", space.clahe_clips)
        if normalise == "clahe" and picked is not None:
            clip = float(picked)
    augment = str(_choice(hp, "augment", space.augment))
    return InputChoice(size, normalise, clip, augment)


def read_inputs(values: dict[str, Any], default: InputChoice) -> InputChoice:
    """A finished trial's input from its saved hyperparameter values (``default`` for
    what an older trial did not record)."""
    normalise = str(values.get("normalise", default.normalise))
    return InputChoice(
        int(values.get("image_size", default.image_size)),
        normalise,
        float(values.get("clahe_clip", default.clahe_clip)),
        str(values.get("augment", default.augment)),
    )
