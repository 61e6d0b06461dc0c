"""Each trial's input data: the study's splits through the trial's own preprocessing.

Image size, normalisation and augmentation are hyperparameters
(:mod:`search_spaces.inputs`), so the datasets depend on the trial. The tuner's
``run_trial`` asks :meth:`InputSource.for_trial` for them; the cache of a
preprocessing config, and its shift sample, are built the first time a trial asks.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from search_spaces.inputs import InputChoice, read_inputs
from study.data.augment import AUGMENTATIONS
from study.data.datasets import SplitArrays, StudyData
from study.data.preprocess import PreprocessConfig
from study.data.shift import ShiftSample, build_shift_sample
from study.search.pipeline import eval_dataset, train_dataset


@dataclass
class TrialInputs:
    """Datasets and arrays of one input choice."""

    choice: InputChoice
    preprocess: PreprocessConfig
    train_ds: Any
    val_ds: Any
    val: SplitArrays
    shift: ShiftSample
    shift_labels: np.ndarray
    shift_ds: Any


def trial_preprocess(base: PreprocessConfig, choice: InputChoice) -> PreprocessConfig:
    """``base`` with the trial's size and normalisation; the clip limit only counts (and
    only enters the cache key) under CLAHE."""
    clip = choice.clahe_clip if choice.normalise == "clahe" else base.clahe_clip
    return replace(base, image_size=choice.image_size, normalise=choice.normalise, clahe_clip=clip)


def default_choice(base: PreprocessConfig) -> InputChoice:
    """The input of a trial that recorded no input hyperparameters (older studies)."""
    return InputChoice(base.image_size, base.normalise, base.clahe_clip, "standard")


class InputSource:
    """Builds (and keeps the latest) datasets for the input a trial's hyperparameters ask."""

    def __init__(self, data: StudyData, batch_size: int, seed: int) -> None:
        self.data, self.batch_size, self.seed = data, batch_size, seed
        self._last: tuple[InputChoice, TrialInputs] | None = None

    def for_values(self, values: dict[str, Any]) -> TrialInputs:
        choice = read_inputs(values, default_choice(self.data.preprocess))
        if self._last is not None and self._last[0] == choice:
            return self._last[1]
        pre = trial_preprocess(self.data.preprocess, choice)
        view = self.data.at(pre)
        shift = build_shift_sample(view.val.paths, pre, self.data.cache_dir, self.seed)
        label_of = dict(zip(view.val.paths, view.val.labels.tolist(), strict=True))
        shift_labels = np.array([label_of[p] for p in shift.paths], np.int32)
        inputs = TrialInputs(
            choice,
            pre,
            train_dataset(
                view.train.images,
                view.train.labels,
                self.batch_size,
                self.seed,
                AUGMENTATIONS[choice.augment],
            ),
            eval_dataset(view.val.images, view.val.labels, self.batch_size),
            view.val,
            shift,
            shift_labels,
            eval_dataset(shift.images, shift_labels, self.batch_size),
        )
        self._last = (choice, inputs)
        return inputs
