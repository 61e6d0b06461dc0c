"""The whole study, stage by stage: data -> search -> select -> report.

This is the only module that walks the pipeline end to end; each stage lives in its
own subpackage and never imports a later one.
"""

from __future__ import annotations

import json
import sys
import time
import warnings
from typing import Any

import keras

from study.config import StudyConfig, resume_mismatch
from study.data.datasets import StudyData, prepare_data
from study.search.runner import search_families, tuner_role


def seed_everything(seed: int) -> None:
    keras.utils.set_random_seed(seed)  # Python, NumPy and TensorFlow


def _check_resume(cfg: StudyConfig) -> None:
    """Resume only the same study: a result-changing setting that differs stops the run
    (exit code 2) with what differs and the two ways forward."""
    path = cfg.study_dir / "config.json"
    if path.is_file():
        diff = resume_mismatch(json.loads(path.read_text()), cfg)
        if diff:
            print(
                f"{cfg.study_dir} holds a study with other settings (saved -> now):\n  "
                + "\n  ".join(diff)
                + f"\nTo keep both, rerun with another name (--name NEW); to start over, "
                f"delete {cfg.study_dir}",
                file=sys.stderr,
                flush=True,
            )
            raise SystemExit(2)
        print(f"resuming study {cfg.name} in {cfg.study_dir}", flush=True)
    cfg.study_dir.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"config": cfg.to_json(), "resume_key": cfg.resume_key()}, indent=1))


def run_study(cfg: StudyConfig) -> dict[str, Any]:
    """Run (or resume) the whole study and return its summary."""
    # Our datasets are already shuffled; Keras warns about its own shuffle flag regardless.
    warnings.filterwarnings("ignore", message=".*`shuffle=True` was passed.*")
    t0 = time.monotonic()
    seed_everything(cfg.seed)
    role = tuner_role()
    lead = role in ("single", "chief")
    if lead:
        _check_resume(cfg)
    data = prepare_data(cfg, write_artifacts=lead)
    if lead:
        _data_figures(cfg, data)
    outcome = search_families(cfg, data, role)
    if not lead:
        print(f"worker {role}: no trials left; the chief chooses the winner", flush=True)
        return {"role": role}
    if not outcome.done:
        raise SystemExit(f"no trial finished ({outcome.stopped}): no winner to choose")
    from study.fmt import fmt_duration
    from study.select.winner import finish_study, write_summary

    summary = finish_study(cfg, data, outcome.skipped, outcome.used)
    summary["seconds"] = time.monotonic() - t0  # this run only; trial_seconds spans all runs
    summary["stopped"] = outcome.stopped
    write_summary(cfg.study_dir, summary)
    _print_winner(summary)
    _write_report(cfg)
    print(
        f"done in {fmt_duration(summary['seconds'])} this run; its {summary['n_trials']} trials "
        f"trained for {fmt_duration(summary['trial_seconds'])} over all runs; "
        f"stopped: {outcome.stopped}: {cfg.study_dir}",
        flush=True,
    )
    return summary


def _data_figures(cfg: StudyConfig, data: StudyData) -> None:
    """The data section's figures: samples, class balance, intensity, sizes, preprocessing."""
    from study.report.data_figures import write_data_figures

    plan = data.plan
    write_data_figures(
        plan.records,
        plan,
        data.audit,
        cfg.study_dir / "figures",
        cfg.preprocess,
        example=plan.of("train")[0].path,
    )


def _print_winner(summary: dict[str, Any]) -> None:
    w = summary["winner"]
    print(
        f"winner: {w['family']} ({w['trial']}) val AUC {w['validation']['auc']:.4f}, "
        f"threshold {w['threshold']:.3f}; test ({w['test_source']}): "
        f"{json.dumps(w['test'].get('accuracy'))} accuracy, AUC {w['test'].get('auc')}",
        flush=True,
    )


def _write_report(cfg: StudyConfig) -> None:
    from study.report.page import write_report

    try:
        print(f"report: {write_report(cfg.study_dir)}", flush=True)
    except Exception as exc:  # the winner is exported; a report bug must not lose the study
        print(
            f"report FAILED ({type(exc).__name__}: {exc}); the study is saved. Fix and run "
            f"'python run_study.py report --study {cfg.study_dir}'",
            file=sys.stderr,
            flush=True,
        )
