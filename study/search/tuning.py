"""Keras-Tuner glue: one tuner per family, with per-trial logging, progress and budgets.

The hypermodels (search_spaces/) build models; the oracles (Keras-Tuner's
Hyperband, Bayesian or Random) choose hyperparameters; this module only adds
what a study needs on top: callbacks, artifacts, a trial budget, a deadline
and progress lines.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import keras
import keras_tuner as kt
import numpy as np

from study.search import trial_log

OBJECTIVE = kt.Objective("val_auc", direction="max")
TUNER_CLASSES = {
    "hyperband": kt.Hyperband,
    "bayesian": kt.BayesianOptimization,
    "random": kt.RandomSearch,
}


def _fmt_time(seconds: float) -> str:
    seconds = int(max(0, seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"


@dataclass
class StudyProgress:
    """Shared across families so each line shows trial i/N, best so far and an ETA."""

    total_trials: int
    start: float = field(default_factory=time.monotonic)
    done: int = 0
    best: float = float("nan")
    best_label: str = ""
    stream: Any = sys.stdout
    resumed: int = 0  # trials finished before this run; the ETA uses this run's pace only

    @classmethod
    def resume(cls, total_trials: int, finished: list[dict[str, Any]]) -> StudyProgress:
        """Carry count and best over from a killed run, so a rerun's lines stay truthful."""
        p = cls(total_trials, done=len(finished), resumed=len(finished))
        for t in finished:
            p.record(t)
        return p

    def record(self, summary: dict[str, Any]) -> float:
        auc = trial_log.objective(summary)
        if np.isnan(self.best) or auc > self.best:
            self.best, self.best_label = auc, f"{summary['family']}#{summary['trial_id']}"
        return auc

    def eta(self) -> str:
        ran = self.done - self.resumed
        if ran <= 0:
            return "?"
        per = (time.monotonic() - self.start) / ran
        return _fmt_time(per * max(0, self.total_trials - self.done))

    def line(self, text: str) -> None:
        print(text, file=self.stream, flush=True)


class ProgressLine(keras.callbacks.Callback):
    """One line per epoch: trial i/N, family, key hyperparameters, val AUC, best, time, ETA."""

    def __init__(
        self, progress: StudyProgress, family: str, trial_id: str, summary: str, epochs: int
    ) -> None:
        super().__init__()
        self.p, self.family, self.trial_id, self.summary, self.epochs = (
            progress,
            family,
            trial_id,
            summary,
            epochs,
        )
        self.trial_best = float("nan")

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        logs = logs or {}
        auc = float(logs.get("val_auc", float("nan")))
        self.trial_best = float(np.nanmax([self.trial_best, auc]))
        best = float(np.nanmax([self.p.best, self.trial_best]))
        self.p.line(
            f"trial {self.p.done + 1}/{self.p.total_trials} {self.family}#{self.trial_id} "
            f"[{self.summary}] epoch {epoch + 1}/{self.epochs} val_auc={auc:.4f} "
            f"best={best:.4f} elapsed={_fmt_time(time.monotonic() - self.p.start)} "
            f"eta={self.p.eta()}"
        )


class ResumableTrial(keras.callbacks.BackupAndRestore):
    """BackupAndRestore that never turns a half-written backup into a failed trial.

    A kill while the first backup is written leaves nothing to fall back on;
    the trial then restarts from epoch 0 instead of failing.
    """

    def __init__(self, backup_dir: Path) -> None:
        super().__init__(str(backup_dir), double_checkpoint=True)

    def on_train_begin(self, logs: dict | None = None) -> None:
        try:
            super().on_train_begin(logs)
        except (OSError, ValueError, KeyError) as exc:
            print(
                f"backup in {self.backup_dir} unreadable ({exc}); restarting this trial", flush=True
            )
            shutil.rmtree(self.backup_dir, ignore_errors=True)
            self.model._initial_epoch = 0


@dataclass
class TrialContext:
    """What every trial of a family needs besides the hyperparameters."""

    study_dir: Path
    family: str
    patience: int
    progress: StudyProgress
    val_ds: Any
    val_paths: list[str]
    val_labels: np.ndarray
    weights: str
    verbose: int
    deadline: float | None  # time.monotonic() value after which no trial starts
    budget: int
    precision: str = "float32"  # Keras dtype policy for this family's models


class StudyTunerMixin:
    """Adds the study's callbacks and per-trial artifacts to any Keras-Tuner tuner."""

    ctx: TrialContext

    def pre_create_trial(self) -> None:
        # A deadline or a finished budget makes the oracle answer STOPPED.
        oracle = self.oracle
        if self.ctx.deadline is not None and time.monotonic() > self.ctx.deadline:
            oracle.max_trials = len(oracle.trials)
            self.ctx.progress.line(f"time budget reached: no new {self.ctx.family} trial")

    def _build_hypermodel(self, hp: kt.HyperParameters) -> keras.Model:
        # Keras-Tuner clears the Keras session before every build, which also resets the
        # global dtype policy: set this family's precision again right before building.
        keras.mixed_precision.set_global_policy(self.ctx.precision)
        return super()._build_hypermodel(hp)

    def _build_and_fit_model(self, trial: kt.engine.trial.Trial, *args, **kwargs):
        hp = trial.hyperparameters
        trial_dir = self.ctx.study_dir / "trials" / f"{self.ctx.family}-{trial.trial_id}"
        trial_dir.mkdir(parents=True, exist_ok=True)
        epochs = int(kwargs.get("epochs", 1))
        describe = getattr(self.hypermodel, "describe", lambda h: "")
        kwargs["callbacks"] = list(kwargs.get("callbacks", [])) + [
            keras.callbacks.EarlyStopping(
                monitor="val_auc", mode="max", patience=self.ctx.patience, restore_best_weights=True
            ),
            # Backup before the CSV row: a row on disk means its epoch can be resumed.
            ResumableTrial(trial_dir / "backup"),
            keras.callbacks.CSVLogger(str(trial_dir / "history.csv"), append=True),
            ProgressLine(self.ctx.progress, self.ctx.family, trial.trial_id, describe(hp), epochs),
        ]
        kwargs["verbose"] = self.ctx.verbose
        t0 = time.monotonic()
        model = self._try_build(hp)
        history = self.hypermodel.fit(hp, model, *args, **kwargs)
        # Hyperband rebuilds a promoted trial from its predecessor's build config and
        # best-epoch checkpoint; Keras-Tuner's own fit path writes the former, so do we.
        Path(self._get_build_config_fname(trial.trial_id)).write_text(
            json.dumps(model.get_build_config())
        )
        seconds = time.monotonic() - t0
        probs = model.predict(self.ctx.val_ds, verbose=0).reshape(-1)
        model.save(trial_dir / "best.keras")
        summary = trial_log.write_trial(
            trial_dir,
            family=self.ctx.family,
            trial_id=trial.trial_id,
            hyperparameters=dict(hp.values),
            # A promoted Hyperband trial continues from its predecessor at initial_epoch.
            epochs_planned=epochs - int(kwargs.get("initial_epoch", 0)),
            seconds=seconds,
            params=int(model.count_params()),
            val_paths=self.ctx.val_paths,
            val_labels=self.ctx.val_labels,
            val_probs=probs,
            weights=self.ctx.weights,
            worker=os.environ.get("KERASTUNER_TUNER_ID", "single"),
            precision=keras.mixed_precision.global_policy().name,
        )
        self._count(summary)
        return history

    def _count(self, summary: dict) -> None:
        p = self.ctx.progress
        p.done += 1
        auc = p.record(summary)
        p.line(
            f"trial {p.done}/{p.total_trials} {summary['family']}#{summary['trial_id']} done: "
            f"val_auc={auc:.4f} epochs={summary['epochs_run']} ({summary['verdict']}) "
            f"best={p.best:.4f} ({p.best_label}) elapsed={_fmt_time(time.monotonic() - p.start)} "
            f"eta={p.eta()}"
        )


def make_tuner(
    kind: str, hypermodel: kt.HyperModel, ctx: TrialContext, max_epochs: int, seed: int
) -> kt.Tuner:
    """A tuner of ``kind`` whose state lives in results/<study>/tuner/<family> (resumable)."""
    base = TUNER_CLASSES[kind]
    cls = type(f"Study{base.__name__}", (StudyTunerMixin, base), {})
    common = dict(
        hypermodel=hypermodel,
        objective=OBJECTIVE,
        seed=seed,
        overwrite=False,
        directory=str(ctx.study_dir / "tuner"),
        project_name=ctx.family,
    )
    if kind == "hyperband":
        tuner = cls(max_epochs=max_epochs, factor=3, **common)
    else:
        tuner = cls(max_trials=ctx.budget, **common)
    tuner.ctx = ctx
    # Hyperband has no trial cap of its own; the oracle honours max_trials in create_trial.
    tuner.oracle.max_trials = ctx.budget
    return tuner
