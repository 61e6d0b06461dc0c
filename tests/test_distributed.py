"""Keras-Tuner's distributed mode: a chief and two workers on localhost, tiny budget."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO, tiny_study_args


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run_cluster(args: list[str], tmp_path: Path, roles: tuple[str, ...]) -> tuple[dict, dict]:
    """Start one process per role on localhost; their exit codes and logs."""
    port = str(_free_port())
    procs = {}
    logs = {}
    for role in roles:
        env = dict(
            os.environ,
            KERASTUNER_TUNER_ID=role,
            KERASTUNER_ORACLE_IP="127.0.0.1",
            KERASTUNER_ORACLE_PORT=port,
        )
        logs[role] = (tmp_path / f"{role}.log").open("w")
        procs[role] = subprocess.Popen(
            [sys.executable, "run_study.py", *args],
            cwd=REPO,
            env=env,
            stdout=logs[role],
            stderr=subprocess.STDOUT,
        )
    try:
        codes = {role: p.wait(timeout=1200) for role, p in procs.items()}
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.kill()
        for f in logs.values():
            f.close()
    return codes, {role: (tmp_path / f"{role}.log").read_text() for role in procs}


def test_chief_and_two_workers_share_one_study(data_dir: Path, tmp_path: Path) -> None:
    args = tiny_study_args(data_dir, tmp_path, name="dist", budget=4)
    args[args.index("--families") + 1] = "custom_cnn"
    args[args.index("--steps-per-epoch") + 1] = "15"
    codes, text = _run_cluster(args, tmp_path, ("chief", "tuner0", "tuner1"))
    assert codes == {"chief": 0, "tuner0": 0, "tuner1": 0}, {r: t[-2000:] for r, t in text.items()}
    study = tmp_path / "results" / "dist"
    trials = [json.loads(p.read_text()) for p in (study / "trials").glob("*/trial.json")]
    assert len(trials) == 4
    assert {t["worker"] for t in trials} == {"tuner0", "tuner1"}, "both workers must train"
    assert (study / "winner" / "saved_model.pb").is_file()  # written by the chief
    assert "the chief chooses the winner" in text["tuner0"]


def test_workers_stop_at_the_chiefs_time_budget(data_dir: Path, tmp_path: Path) -> None:
    """The chief's oracle enforces --time-budget: its worker stops, neither crashes."""
    args = tiny_study_args(data_dir, tmp_path, name="tb", budget=6)
    args[args.index("--families") + 1] = "custom_cnn"
    args[args.index("--steps-per-epoch") + 1] = "20"
    args += ["--time-budget", "0.3"]  # 18 s: the worker's data setup and a trial or two
    codes, text = _run_cluster(args, tmp_path, ("chief", "tuner0"))
    assert codes == {"chief": 0, "tuner0": 0}, {r: t[-2000:] for r, t in text.items()}
    summary = json.loads((tmp_path / "results/tb/summary.json").read_text())
    assert 1 <= summary["n_trials"] < 6
    assert summary["stopped"].startswith("time budget of 0.3 min reached after")
