"""README claims that only a run can check: TensorBoard logs, --time-budget, safe resume."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from tests.conftest import REPO, tiny_study_args

PY = sys.executable


def _run(args: list[str], timeout: int = 900) -> subprocess.CompletedProcess:
    return subprocess.run(
        [PY, "run_study.py", *args], cwd=REPO, capture_output=True, text=True, timeout=timeout
    )


def _one_family(args: list[str], **flags: str) -> list[str]:
    """Tiny-study args with custom_cnn only and the given flags (e.g. budget="4")."""
    args = list(args)
    args[args.index("--families") + 1] = "custom_cnn"
    for name, value in flags.items():
        flag = "--" + name.replace("_", "-")
        if flag in args:
            args[args.index(flag) + 1] = value
        else:
            args += [flag, value]
    return args


# --------------------------------------------------------------------------- TensorBoard


def _event_tags(run_dir: Path) -> set[str]:
    from tensorflow.compat.v1.train import summary_iterator

    return {
        v.tag
        for f in run_dir.glob("*tfevents*")
        for event in summary_iterator(str(f))
        for v in event.summary.value
    }


def test_tensorboard_logs_are_written_per_trial(tiny_study: Path) -> None:
    board = tiny_study / "tensorboard"
    trials = sorted(p.name for p in (tiny_study / "trials").iterdir())
    assert trials and sorted(p.name for p in board.iterdir()) == trials
    for name in trials:
        assert list((board / name).rglob("*tfevents*")), name
        assert "epoch_loss" in _event_tags(board / name / "train"), name
        assert {"epoch_loss", "epoch_auc"} <= _event_tags(board / name / "validation"), name


# --------------------------------------------------------------------------- time budget


def test_time_budget_stops_after_the_trial_in_flight(data_dir: Path, tmp_path: Path) -> None:
    # 0.05 min = 3 s of search: the first trial (20 steps x 2 epochs) outlasts it.
    args = _one_family(
        tiny_study_args(data_dir, tmp_path, name="tb", budget=4),
        time_budget="0.05",
        steps_per_epoch="20",
    )
    out = _run(args)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    summary = json.loads((tmp_path / "results/tb/summary.json").read_text())
    assert summary["n_trials"] == 1
    why = "time budget of 0.05 min reached after 1 of 4 trials"
    assert summary["stopped"] == why
    assert why in out.stdout.strip().splitlines()[-1]
    assert f"stopped: {why}" in (tmp_path / "results/tb/report.html").read_text()


def test_a_family_reached_after_the_deadline_is_not_searched(monkeypatch, tmp_path: Path) -> None:
    """On one machine, a later family after the deadline creates no tuner and no trial."""
    from study.config import StudyConfig
    from study.search import runner

    searched: list[str] = []

    class SlowTuner:
        def __init__(self, family: str) -> None:
            self.family = family

        def search(self, *args: Any, **kwargs: Any) -> None:
            searched.append(self.family)
            time.sleep(0.2)  # past the 0.06 s deadline

    monkeypatch.setattr(
        runner, "resolve_families", lambda cfg: ({"a": object(), "b": object()}, {}, {})
    )
    monkeypatch.setattr(runner, "make_tuner", lambda kind, hm, ctx, *a: SlowTuner(ctx.family))
    monkeypatch.setattr(runner, "InputSource", lambda *a: None)
    split = SimpleNamespace(images=None, labels=[0, 1], paths=[])
    data = SimpleNamespace(train=split, val=split)
    cfg = StudyConfig(results_dir=tmp_path, budget=4, time_budget=0.001, steps_per_epoch=1)
    outcome = runner.search_families(cfg, data, "single")
    assert searched == ["a"]
    assert "time budget" in outcome.skipped["b"]
    assert outcome.stopped == "time budget of 0.001 min reached after 0 of 4 trials"


def test_a_worker_never_touches_the_deadline(tmp_path: Path) -> None:
    """A worker's oracle is the chief's OracleClient (no ``trials``): no deadline there."""
    from study.search.tuning import StudyProgress, TrialContext, make_tuner

    ctx = TrialContext(tmp_path, "f", 1, StudyProgress(1), None, "none", 0, 0.0, 1, "tuner0")
    assert ctx.past_deadline()
    tuner = make_tuner("random", _tiny_model, ctx, max_epochs=1, seed=0)
    tuner.oracle = SimpleNamespace()  # like OracleClient: stop_new_trials would raise
    tuner.pre_create_trial()


def _tiny_model(hp: Any) -> Any:
    import keras

    hp.Fixed("x", 1)
    inp = keras.Input((2,))
    return keras.Model(inp, keras.layers.Dense(1)(inp))


# --------------------------------------------------------------------------- resume


def _saved_study(tmp_path: Path, data_dir: Path) -> Any:
    from study.config import config_from_args, study_parser
    from study.workflow import _check_resume

    args = tiny_study_args(data_dir, tmp_path, name="r")
    cfg = config_from_args(study_parser().parse_args(args))
    _check_resume(cfg)
    return cfg, args


@pytest.mark.parametrize(
    ("change", "shown"),
    [
        (lambda c, t: replace(c, data_dir=t), "data_dir: "),
        (lambda c, t: replace(c, patience=3), "patience: 2 -> 3"),
        (lambda c, t: replace(c, min_sensitivity=0.9), "min_sensitivity: 0.95 -> 0.9"),
        (lambda c, t: replace(c, augment_modes=("domain",)), "augment_modes: "),
        (lambda c, t: replace(c, batch_size=8), "batch_size: 32 -> 8"),
        (lambda c, t: replace(c, extra_data=(t,)), "extra_data: [] -> "),
    ],
)
def test_resume_with_other_settings_is_refused(
    change: Any, shown: str, data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    from study.workflow import _check_resume

    cfg, _ = _saved_study(tmp_path, data_dir)
    with pytest.raises(SystemExit) as exc:
        _check_resume(change(cfg, tmp_path))
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert shown in err and "--name" in err and "delete" in err, err


def test_budget_time_budget_and_folders_do_not_block_a_resume(
    data_dir: Path, tmp_path: Path
) -> None:
    from study.workflow import _check_resume

    cfg, _ = _saved_study(tmp_path, data_dir)
    _check_resume(replace(cfg, budget=50, time_budget=5.0, workers=1, verbose=1))
    _check_resume(replace(cfg, cache_dir=tmp_path / "other-cache"))


def test_refused_resume_exits_2_without_traceback(data_dir: Path, tmp_path: Path) -> None:
    _, args = _saved_study(tmp_path, data_dir)
    args[args.index("--patience") + 1] = "4"
    out = _run(args, timeout=300)
    assert out.returncode == 2, out.stdout[-2000:] + out.stderr[-2000:]
    assert "patience: 2 -> 4" in out.stderr and "Traceback" not in out.stderr, out.stderr


def test_a_larger_budget_extends_the_study(data_dir: Path, tmp_path: Path) -> None:
    """BUDGET=2 then 4 keeps trials 1-2 and adds two; BUDGET=2 again keeps all four."""
    study = tmp_path / "results" / "grow"

    def run(budget: int) -> subprocess.CompletedProcess:
        args = _one_family(tiny_study_args(data_dir, tmp_path, name="grow", budget=budget))
        out = _run(args)
        assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
        return out

    run(2)
    first = {p: p.stat().st_mtime_ns for p in study.glob("trials/*/trial.json")}
    assert len(first) == 2
    run(4)
    after = {p: p.stat().st_mtime_ns for p in study.glob("trials/*/trial.json")}
    assert len(after) == 4 and all(after[p] == t for p, t in first.items()), "a trial was rerun"
    summary = json.loads((study / "summary.json").read_text())
    assert summary["n_trials"] == 4 and summary["stopped"] == "budget of 4 trials done"
    out = run(2)
    assert "budget 2 is below the 4 trials already finished" in out.stdout
    assert json.loads((study / "summary.json").read_text())["n_trials"] == 4
