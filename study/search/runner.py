"""The search stage: one Keras-Tuner search per family, sharing the trial budget.

Rerunning the same command resumes: finished trials are read back from the
tuner's project folder and never rerun, and a trial that was killed
mid-way restarts from its last finished epoch (BackupAndRestore).
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import tensorflow as tf

from search_spaces import FAMILIES, dtype_policy
from study.data.datasets import StudyData
from study.search.pipeline import steps_per_epoch
from study.search.trial_inputs import InputSource
from study.search.trial_log import load_trials
from study.search.tuning import StudyProgress, TrialContext, make_tuner

if TYPE_CHECKING:  # the config is passed down; the search stage never imports it at run time
    from study.config import StudyConfig


@dataclass
class SearchOutcome:
    """What the search leaves for selection: families that did not run, weights used,
    and why the search stopped (for the summary)."""

    skipped: dict[str, str]
    used: dict[str, str]
    stopped: str = ""
    done: int = 0  # trials finished over all runs


def share_budget(budget: int, families: list[str]) -> dict[str, int]:
    """Equal shares; the remainder goes to the first families in the given order."""
    if not families:
        return {}
    base, extra = divmod(budget, len(families))
    return {f: base + (i < extra) for i, f in enumerate(families)}


def tuner_role() -> str:
    """'single', 'chief' or a worker id, from Keras-Tuner's distributed env vars."""
    tid = os.environ.get("KERASTUNER_TUNER_ID")
    if not tid or "KERASTUNER_ORACLE_IP" not in os.environ:
        return "single"
    return "chief" if tid == "chief" else tid


def use_family_port(index: int) -> None:
    """One oracle port per family (base port + index): a new chief server never races
    the previous family's server for the same port."""
    base = os.environ.setdefault(
        "PNEUMOSCOPE_ORACLE_BASE_PORT", os.environ["KERASTUNER_ORACLE_PORT"]
    )
    os.environ["KERASTUNER_ORACLE_PORT"] = str(int(base) + index)


def resolve_families(cfg: StudyConfig) -> tuple[dict[str, Any], dict[str, str], dict[str, str]]:
    """Hypermodel per runnable family; skipped families with their reason; weights used."""
    from study.models.weights import resolve_imagenet_weights

    runnable, skipped, used = {}, {}, {}
    for fam in cfg.families:
        hypermodel = FAMILIES[fam].hypermodel_class()
        precision = dtype_policy(fam, cfg.precision)
        common = dict(
            image_size=cfg.image_size, seed=cfg.seed, precision=precision, inputs=cfg.input_space()
        )
        if not FAMILIES[fam].needs_weights:
            runnable[fam] = hypermodel(weights=None, **common)
            continue
        src = resolve_imagenet_weights(fam, cfg.weights_dir)
        if not src.available:
            skipped[fam] = src.reason
            print(f"family {fam}: SKIPPED - {src.reason}", flush=True)
            continue
        used[fam] = f"ImageNet ({src.kind}: {Path(src.path).name})"
        runnable[fam] = hypermodel(weights=src, **common)
    return runnable, skipped, used


def search_families(cfg: StudyConfig, data: StudyData, role: str) -> SearchOutcome:
    """One Keras-Tuner search per runnable family; families that cannot run are skipped.

    The time budget counts from the first family's search (data preparation and model
    setup excluded), so even a short one lets a first trial start. On one machine a
    family that would start after it is not searched at all; in distributed mode the
    chief's oracle answers STOPPED instead, so its workers move on with it.
    """
    runnable, skipped, used = resolve_families(cfg)
    if not runnable:
        raise SystemExit(f"no family can run: {skipped}")
    shares, finished = _announce_budget(cfg, list(runnable), skipped)
    progress = StudyProgress.resume(sum(shares.values()), finished, cfg.objective)
    deadline: float | None = None  # set when the first search starts
    timed_out = False  # a family stopped at its share of the time budget
    inputs = InputSource(data, cfg.batch_size, cfg.seed)
    steps = cfg.steps_per_epoch or steps_per_epoch(len(data.train.labels), cfg.batch_size)
    for i, (fam, hypermodel) in enumerate(runnable.items()):
        if role != "single":
            use_family_port(i)
        elif deadline is not None and time.monotonic() > deadline:
            _skip_after_deadline(cfg, fam, finished, skipped)
            continue
        ctx = TrialContext(
            cfg.study_dir,
            fam,
            cfg.patience,
            progress,
            inputs,
            used.get(fam, "none (trained from scratch)"),
            cfg.verbose,
            deadline,
            shares[fam],
            role,
        )
        tuner = make_tuner(cfg.tuner, hypermodel, ctx, cfg.max_epochs, cfg.seed)
        if cfg.time_budget and deadline is None:
            deadline = time.monotonic() + cfg.time_budget * 60
        ctx.deadline = family_deadline(deadline, len(runnable) - i)
        failure = _search_one(tuner, steps, cfg)
        timed_out = timed_out or ctx.past_deadline()
        if failure:
            skipped[fam] = failure
            print(f"family {fam}: FAILED - {failure}", file=sys.stderr, flush=True)
        tf.keras.backend.clear_session()
    done = len(load_trials(cfg.study_dir))
    timed_out = timed_out or (deadline is not None and time.monotonic() > deadline)
    stopped = stop_reason(cfg, done, sum(shares.values()), timed_out)
    return SearchOutcome(skipped, used, stopped, done)


def family_deadline(deadline: float | None, families_left: int) -> float | None:
    """This family's equal share of the time left, so a slow first family cannot use up
    the whole time budget (the trial budget is shared the same way)."""
    if deadline is None:
        return None
    now = time.monotonic()
    return now + max(0.0, deadline - now) / max(1, families_left)


def _announce_budget(
    cfg: StudyConfig, runnable: list[str], skipped: dict[str, str]
) -> tuple[dict[str, int], list[dict[str, Any]]]:
    """Each family's share, printed; and the trials earlier runs finished."""
    shares = share_budget(cfg.budget, runnable)
    print(
        "budget: "
        + ", ".join(f"{f} {n} trials" for f, n in shares.items())
        + (f" (skipped: {', '.join(skipped)})" if skipped else ""),
        flush=True,
    )
    finished = load_trials(cfg.study_dir)
    if len(finished) > cfg.budget:
        print(budget_below_finished(cfg.budget, len(finished)), flush=True)
    return shares, finished


def _skip_after_deadline(
    cfg: StudyConfig, fam: str, finished: list[dict[str, Any]], skipped: dict[str, str]
) -> None:
    """A family reached after the deadline is not searched; without trials from an
    earlier run it has no model, and the summary says why."""
    if not any(t["family"] == fam for t in finished):
        skipped[fam] = f"time budget of {cfg.time_budget:g} min reached before it started"
    print(f"time budget reached: family {fam} not searched", flush=True)


def budget_below_finished(budget: int, finished: int) -> str:
    return (
        f"budget {budget} is below the {finished} trials already finished: no new trial "
        f"runs, and the winner is chosen among those {finished}"
    )


def stop_reason(cfg: StudyConfig, done: int, planned: int, timed_out: bool) -> str:
    """Why the search ended, in words for the summary and the final line."""
    if done >= planned:
        extra = f" ({budget_below_finished(planned, done)})" if done > planned else ""
        return f"budget of {planned} trials done{extra}"
    if timed_out:
        return f"time budget of {cfg.time_budget:g} min reached after {done} of {planned} trials"
    return f"search ended after {done} of {planned} trials (see skipped families and the log)"


def _search_one(tuner: Any, steps: int, cfg: StudyConfig) -> str:
    """Run one family's search; the reason it stopped early, or '' when it finished.

    No datasets here: each trial's come from its input hyperparameters (StudyTuner.run_trial).
    """
    try:
        tuner.search(steps_per_epoch=steps, epochs=cfg.max_epochs, verbose=cfg.verbose)
    except RuntimeError as exc:  # Keras-Tuner gives up after repeated trial failures
        if "consecutive failures" not in str(exc):
            raise
        return f"stopped after repeated trial failures ({exc}); see the log above"
    return ""
