"""The study: data stage, one Keras-Tuner search per family, then the winner.

Rerunning the same command resumes: finished trials are read back from the
tuner's project folder and never rerun, and a trial that was killed
mid-way restarts from its last finished epoch (BackupAndRestore).
"""

from __future__ import annotations

import json
import os
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import keras
import tensorflow as tf

from study.config import FAMILY_PRECISION, StudyConfig
from study.datasets import prepare_data
from study.pipeline import eval_dataset, steps_per_epoch, train_dataset
from study.trial_log import load_trials
from study.tuning import StudyProgress, TrialContext, make_tuner


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


def seed_everything(seed: int) -> None:
    keras.utils.set_random_seed(seed)  # Python, NumPy and TensorFlow


def _check_resume(cfg: StudyConfig) -> None:
    path = cfg.study_dir / "config.json"
    if path.is_file():
        old = json.loads(path.read_text()).get("resume_key")
        if old and old != json.loads(json.dumps(cfg.resume_key())):
            raise SystemExit(
                f"{cfg.study_dir} holds a study with other settings ({old}); "
                "use another --name or delete that folder"
            )
        print(f"resuming study {cfg.name} in {cfg.study_dir}", flush=True)
    cfg.study_dir.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"config": cfg.to_json(), "resume_key": cfg.resume_key()}, indent=1))


def resolve_families(cfg: StudyConfig) -> tuple[dict[str, Any], dict[str, str], dict[str, str]]:
    """Hypermodel per runnable family; skipped families with their reason; weights used."""
    from search_spaces import FAMILIES
    from study.weights import resolve_imagenet_weights

    runnable, skipped, used = {}, {}, {}
    for fam in cfg.families:
        if fam == "custom_cnn":
            runnable[fam] = FAMILIES[fam](image_size=cfg.image_size, seed=cfg.seed, weights=None)
            continue
        src = resolve_imagenet_weights(fam, cfg.weights_dir)
        if not src.available:
            skipped[fam] = src.reason
            print(f"family {fam}: SKIPPED - {src.reason}", flush=True)
            continue
        used[fam] = f"ImageNet ({src.kind}: {Path(src.path).name})"
        runnable[fam] = FAMILIES[fam](image_size=cfg.image_size, seed=cfg.seed, weights=src)
    return runnable, skipped, used


def run_study(cfg: StudyConfig) -> dict[str, Any]:
    """Run (or resume) the whole study and return its summary."""
    # Our datasets are already shuffled; Keras warns about its own shuffle flag regardless.
    warnings.filterwarnings("ignore", message=".*`shuffle=True` was passed.*")
    t0 = time.monotonic()
    seed_everything(cfg.seed)
    role = tuner_role()
    if role in ("single", "chief"):
        _check_resume(cfg)
    data = prepare_data(cfg, write_artifacts=role in ("single", "chief"))
    runnable, skipped, used = resolve_families(cfg)
    if not runnable:
        raise SystemExit(f"no family can run: {skipped}")
    shares = share_budget(cfg.budget, list(runnable))
    print(
        "budget: "
        + ", ".join(f"{f} {n} trials" for f, n in shares.items())
        + (f" (skipped: {', '.join(skipped)})" if skipped else ""),
        flush=True,
    )
    progress = StudyProgress.resume(sum(shares.values()), load_trials(cfg.study_dir))
    deadline = t0 + cfg.time_budget * 60 if cfg.time_budget else None
    val_ds = eval_dataset(data.val.images, data.val.labels, cfg.batch_size)
    steps = cfg.steps_per_epoch or steps_per_epoch(len(data.train.labels), cfg.batch_size)
    for i, (fam, hypermodel) in enumerate(runnable.items()):
        if role != "single":
            use_family_port(i)
        policy = FAMILY_PRECISION[fam] if cfg.precision == "auto" else cfg.precision
        ctx = TrialContext(
            cfg.study_dir,
            fam,
            cfg.patience,
            progress,
            val_ds,
            data.val.paths,
            data.val.labels,
            used.get(fam, "none (trained from scratch)"),
            cfg.verbose,
            deadline,
            shares[fam],
            policy,
        )
        tuner = make_tuner(cfg.tuner, hypermodel, ctx, cfg.max_epochs, cfg.seed)
        train_ds = train_dataset(
            data.train.images, data.train.labels, cfg.batch_size, cfg.seed, cfg.augment
        )
        try:
            tuner.search(
                train_ds,
                steps_per_epoch=steps,
                epochs=cfg.max_epochs,
                validation_data=val_ds,
                verbose=cfg.verbose,
            )
        except RuntimeError as exc:  # Keras-Tuner gives up after repeated trial failures
            if "consecutive failures" not in str(exc):
                raise
            skipped[fam] = f"stopped after repeated trial failures ({exc}); see the log above"
            print(f"family {fam}: FAILED - {skipped[fam]}", file=sys.stderr, flush=True)
        tf.keras.backend.clear_session()
    if role not in ("single", "chief"):
        print(f"worker {role}: no trials left; the chief chooses the winner", flush=True)
        return {"role": role}
    from study.winner import finish_study

    summary = finish_study(cfg, data, skipped, used)
    summary["seconds"] = time.monotonic() - t0  # this run only; trial_seconds spans all runs
    (cfg.study_dir / "summary.json").write_text(json.dumps(summary, indent=1, default=str))
    w = summary["winner"]
    print(
        f"winner: {w['family']} ({w['trial']}) val AUC {w['validation']['auc']:.4f}, "
        f"threshold {w['threshold']:.3f}; test ({w['test_source']}): "
        f"{json.dumps(w['test'].get('accuracy'))} accuracy, AUC {w['test'].get('auc')}",
        flush=True,
    )
    from study.report import write_report

    try:
        print(f"report: {write_report(cfg.study_dir)}", flush=True)
    except Exception as exc:  # the winner is exported; a report bug must not lose the study
        print(
            f"report FAILED ({type(exc).__name__}: {exc}); the study is saved. Fix and run "
            f"'python run_study.py report --study {cfg.study_dir}'",
            file=sys.stderr,
            flush=True,
        )
    print(
        f"done in {summary['seconds'] / 60:.1f} min this run; its {summary['n_trials']} trials "
        f"trained for {summary['trial_seconds'] / 60:.1f} min over all runs: {cfg.study_dir}",
        flush=True,
    )
    return summary
