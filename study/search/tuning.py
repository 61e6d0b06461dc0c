"""Keras-Tuner glue: one tuner per family, with per-trial logging, progress and budgets.

The hypermodels (search_spaces/) build models; the oracles (Keras-Tuner's
Hyperband, Bayesian or Random) choose hyperparameters; this module only adds
what a study needs on top: callbacks, artifacts, a trial budget, a deadline
and progress lines.
"""

from __future__ import annotations

import os
import shutil
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import keras
import keras_tuner as kt
import numpy as np

from study import keras_compat
from study.fmt import fmt_duration
from study.search import trial_log
from study.search.trial_inputs import InputSource, TrialInputs

OBJECTIVE = kt.Objective("val_auc", direction="max")


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
    objective: str = trial_log.DEFAULT_OBJECTIVE

    @classmethod
    def resume(
        cls, total_trials: int, finished: list[dict[str, Any]], objective: str
    ) -> StudyProgress:
        """Carry count and best over from a killed run, so a rerun's lines stay truthful."""
        p = cls(total_trials, done=len(finished), resumed=len(finished), objective=objective)
        for t in finished:
            p.record(t)
        return p

    def record(self, summary: dict[str, Any]) -> float:
        auc = trial_log.objective(summary, self.objective)
        if np.isnan(self.best) or auc > self.best:
            self.best, self.best_label = auc, f"{summary['family']}#{summary['trial_id']}"
        return auc

    def trial_done(self, summary: dict[str, Any]) -> None:
        """Count a finished trial and print its line with the study's best so far."""
        self.done += 1
        auc = self.record(summary)
        self.line(
            f"trial {self.done}/{self.total_trials} {summary['family']}#{summary['trial_id']} "
            f"done: {self.objective}={auc:.4f} epochs={summary['epochs_run']} "
            f"({summary['verdict']}) "
            f"best={self.best:.4f} ({self.best_label}) "
            f"elapsed={fmt_duration(time.monotonic() - self.start)} eta={self.eta()}"
        )

    def eta(self) -> str:
        ran = self.done - self.resumed
        if ran <= 0:
            return "?"
        per = (time.monotonic() - self.start) / ran
        return fmt_duration(per * max(0, self.total_trials - self.done))

    def line(self, text: str) -> None:
        print(text, file=self.stream, flush=True)


class ProgressLine(keras.callbacks.Callback):
    """One line per epoch: trial i/N, family, key hyperparameters, epoch val AUC, best, ETA.

    ``best=`` is the study objective of finished trials only (``StudyProgress.best``);
    the epoch's binned Keras AUC is shown apart as ``epoch_val_auc=`` and never mixed in.
    """

    def __init__(self, progress: StudyProgress, family: str, trial_id: str, summary: str) -> None:
        super().__init__()
        self.p, self.family, self.trial_id, self.summary = progress, family, trial_id, summary

    def __deepcopy__(self, memo: dict) -> ProgressLine:
        # Keras-Tuner deep-copies a trial's callbacks; this one must keep sharing the
        # study's progress (and its output stream), and is made per trial anyway.
        return self

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        auc = float((logs or {}).get("val_auc", float("nan")))
        p = self.p
        p.line(
            f"trial {p.done + 1}/{p.total_trials} {self.family}#{self.trial_id} "
            f"[{self.summary}] epoch {epoch + 1}/{self.params.get('epochs', '?')} "
            f"epoch_val_auc={auc:.4f} best={p.best:.4f} "
            f"elapsed={fmt_duration(time.monotonic() - p.start)} eta={p.eta()}"
        )


class ResumableTrial(keras.callbacks.BackupAndRestore):
    """BackupAndRestore that never turns a half-written backup into a failed trial.

    A kill while the first backup is written leaves nothing to fall back on;
    the trial then restarts from its first epoch instead of failing.
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
            keras_compat.forget_restored_epoch(self.model)


@dataclass
class TrialContext:
    """What every trial of a family needs besides the hyperparameters."""

    study_dir: Path
    family: str
    patience: int
    progress: StudyProgress
    inputs: InputSource
    weights: str
    verbose: int
    deadline: float | None  # time.monotonic() value after which no trial starts
    budget: int
    role: str = "single"  # 'single', 'chief' or a worker id (see runner.tuner_role)

    def past_deadline(self) -> bool:
        return self.deadline is not None and time.monotonic() > self.deadline

    def trial_dir(self, trial_id: str) -> Path:
        return self.study_dir / "trials" / f"{self.family}-{trial_id}"


class TrialTensorBoard(keras.callbacks.TensorBoard):
    """TensorBoard logs of one trial in results/<study>/tensorboard/<family>-<trial_id>/.

    Its own class name on purpose: Keras-Tuner rewrites the ``log_dir`` of callbacks
    named ``TensorBoard`` to ``<log_dir>/<trial_id>/execution0``; this one keeps the
    study's layout. Epoch scalars only (no graph, histograms or profiling): cheap.
    """

    def __init__(self, log_dir: Path) -> None:
        super().__init__(str(log_dir), histogram_freq=0, write_graph=False, profile_batch=0)


class TrialArtifacts(keras.callbacks.Callback):
    """Writes a finished trial's artifacts from the kept (best-epoch) model.

    It runs at ``on_train_end`` after ``EarlyStopping(restore_best_weights=True)`` has
    put the best epoch's weights back: validation predictions, ``best.keras`` and
    ``trial.json``; then it counts the trial in the study's progress.
    """

    def __init__(
        self,
        ctx: TrialContext,
        trial: kt.engine.trial.Trial,
        inputs: TrialInputs,
        epochs_planned: int,
        started: float,
    ) -> None:
        super().__init__()
        self.ctx, self.trial, self.inputs = ctx, trial, inputs
        self.epochs_planned, self.started = epochs_planned, started

    def __deepcopy__(self, memo: dict) -> TrialArtifacts:
        # Keras-Tuner deep-copies a trial's callbacks; this one holds the shared progress
        # and the validation data, and is made per trial anyway.
        return self

    def on_train_end(self, logs: dict | None = None) -> None:
        ctx, trial = self.ctx, self.trial
        seconds = time.monotonic() - self.started
        trial_dir = ctx.trial_dir(trial.trial_id)
        inputs = self.inputs
        probs = self.model.predict(inputs.val_ds, verbose=0).reshape(-1)
        shift_probs = self.model.predict(inputs.shift_ds, verbose=0).reshape(-1)
        self.model.save(trial_dir / "best.keras")
        summary = trial_log.write_trial(
            trial_dir,
            family=ctx.family,
            trial_id=trial.trial_id,
            hyperparameters=dict(trial.hyperparameters.values),
            epochs_planned=self.epochs_planned,
            seconds=seconds,
            params=int(self.model.count_params()),
            val_paths=inputs.val.paths,
            val_labels=inputs.val.labels,
            val_probs=probs,
            shift=trial_log.ShiftPredictions(
                inputs.shift.paths, inputs.shift.conditions, inputs.shift_labels, shift_probs
            ),
            inputs={
                "preprocess": inputs.preprocess.to_dict(),
                "image_size": inputs.preprocess.image_size,
                "augment": inputs.choice.augment,
            },
            weights=ctx.weights,
            worker=os.environ.get("KERASTUNER_TUNER_ID", "single"),
            precision=self.model.dtype_policy.name,
        )
        ctx.progress.trial_done(summary)


def trial_callbacks(
    ctx: TrialContext,
    trial: kt.engine.trial.Trial,
    inputs: TrialInputs,
    describe: str,
    epochs_planned: int,
) -> list[keras.callbacks.Callback]:
    """The study's callbacks for one trial, in the order their ``on_train_end`` must run."""
    trial_dir = ctx.trial_dir(trial.trial_id)
    trial_dir.mkdir(parents=True, exist_ok=True)
    return [
        keras.callbacks.EarlyStopping(
            monitor="val_auc", mode="max", patience=ctx.patience, restore_best_weights=True
        ),
        # Backup before the CSV row: a row on disk means its epoch can be resumed.
        ResumableTrial(trial_dir / "backup"),
        keras.callbacks.CSVLogger(str(trial_dir / "history.csv"), append=True),
        TrialTensorBoard(ctx.study_dir / "tensorboard" / f"{ctx.family}-{trial.trial_id}"),
        ProgressLine(ctx.progress, ctx.family, trial.trial_id, describe),
        # Last: the best weights are back and history.csv is complete and closed.
        TrialArtifacts(ctx, trial, inputs, epochs_planned, time.monotonic()),
    ]


class StudyTuner(kt.Tuner):
    """The study's additions to a Keras-Tuner tuner, through its public hooks only.

    Named tuners list it *after* the search algorithm's class, so the algorithm's own
    ``run_trial`` (Hyperband's ``epochs``/``initial_epoch`` for a promoted trial) has
    set the fit arguments before :meth:`run_trial` here reads them.
    """

    def __init__(self, *args: Any, ctx: TrialContext, **kwargs: Any) -> None:
        self.ctx = ctx
        super().__init__(*args, **kwargs)

    def pre_create_trial(self) -> None:
        """A passed deadline makes the oracle answer STOPPED: no new trial starts.

        Not on a worker: its oracle is the chief's, which enforces the deadline for
        every worker (see :meth:`search`); a worker's context has no deadline.
        """
        if self.ctx.role == "single" and self.ctx.past_deadline():
            self._stop_at_deadline()

    def _stop_at_deadline(self) -> None:
        keras_compat.stop_new_trials(self.oracle)
        self.ctx.progress.line(f"time budget reached: no new {self.ctx.family} trial")

    def search(self, *fit_args: Any, **fit_kwargs: Any) -> None:
        """On the chief, stop the oracle it serves to the workers at the deadline.

        The chief only serves its oracle while the workers train, so a timer stops it;
        each worker's next request is then answered STOPPED, the same way a used-up
        budget ends its search loop (and lets the chief's server finish).
        """
        if self.ctx.role != "chief" or self.ctx.deadline is None:
            return super().search(*fit_args, **fit_kwargs)
        if self.ctx.past_deadline():
            self._stop_at_deadline()
        wait = max(0.0, self.ctx.deadline - time.monotonic())
        timer = threading.Timer(wait, self._stop_at_deadline)
        timer.daemon = True
        timer.start()
        try:
            return super().search(*fit_args, **fit_kwargs)
        finally:
            timer.cancel()

    def run_trial(self, trial: kt.engine.trial.Trial, *args: Any, **kwargs: Any) -> Any:
        """Keras-Tuner's run_trial (build, fit, best-epoch checkpoint) plus our callbacks,
        on the datasets of the trial's own input hyperparameters (size, normalisation,
        augmentation): the search passes none itself."""
        # A promoted Hyperband trial continues from its predecessor at initial_epoch.
        planned = int(kwargs.get("epochs", 1)) - int(kwargs.get("initial_epoch", 0))
        hp = trial.hyperparameters
        inputs = self.ctx.inputs.for_values(hp.values)
        describe = f"{inputs.preprocess.image_size}px {inputs.preprocess.normalise} "
        describe += f"aug={inputs.choice.augment} "
        describe += getattr(self.hypermodel, "describe", lambda hp: "")(hp)
        study = trial_callbacks(self.ctx, trial, inputs, describe, planned)
        kwargs["callbacks"] = [*kwargs.get("callbacks", []), *study]
        kwargs["verbose"] = self.ctx.verbose
        kwargs["validation_data"] = inputs.val_ds
        return super().run_trial(trial, inputs.train_ds, *args, **kwargs)


class StudyHyperband(kt.Hyperband, StudyTuner):
    """Hyperband with the study's callbacks, artifacts and deadline."""


class StudyBayesianOptimization(kt.BayesianOptimization, StudyTuner):
    """Bayesian optimisation with the study's callbacks, artifacts and deadline."""


class StudyRandomSearch(kt.RandomSearch, StudyTuner):
    """Random search with the study's callbacks, artifacts and deadline."""


TUNER_CLASSES: dict[str, type[StudyTuner]] = {
    "hyperband": StudyHyperband,
    "bayesian": StudyBayesianOptimization,
    "random": StudyRandomSearch,
}


def make_tuner(
    kind: str, hypermodel: kt.HyperModel, ctx: TrialContext, max_epochs: int, seed: int
) -> StudyTuner:
    """A tuner of ``kind`` whose state lives in results/<study>/tuner/<family> (resumable)."""
    common: dict[str, Any] = dict(
        hypermodel=hypermodel,
        objective=OBJECTIVE,
        seed=seed,
        overwrite=False,
        directory=str(ctx.study_dir / "tuner"),
        project_name=ctx.family,
        ctx=ctx,
    )
    if kind != "hyperband":
        return TUNER_CLASSES[kind](max_trials=ctx.budget, **common)
    # One Hyperband iteration holds a fixed number of trials (30 at 12 epochs); the budget,
    # not the iteration count, must bound the search, so iterate until the cap stops it.
    # A resumed oracle reloads its saved count, hence the assignment after construction.
    tuner = StudyHyperband(max_epochs=max_epochs, factor=3, hyperband_iterations=0, **common)
    tuner.oracle.hyperband_iterations = float("inf")
    keras_compat.cap_trials(tuner.oracle, ctx.budget)
    return tuner
