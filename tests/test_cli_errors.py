"""run_study.py as a user runs it: missing folders are one clear error line, and
`data audit` works on a folder holding any subset of train/val/test."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO, copy_patients


def _run(*args: str, cache_dir: Path) -> subprocess.CompletedProcess:
    env = os.environ | {"PNEUMOSCOPE_CACHE_DIR": str(cache_dir)}
    return subprocess.run(
        [sys.executable, str(REPO / "run_study.py"), *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.mark.parametrize(
    "command",
    ["data audit --data-dir {missing} --out {out}", "report --study {missing}"],
    ids=["data-audit", "report"],
)
def test_missing_folder_is_one_error_line_and_exit_2(command: str, tmp_path: Path) -> None:
    missing = tmp_path / "nonexistent"
    args = command.format(missing=missing, out=tmp_path / "out").split()
    proc = _run(*args, cache_dir=tmp_path)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: ") and str(missing) in lines[0]
    assert "Traceback" not in proc.stderr + proc.stdout


@pytest.mark.parametrize("splits", [("val",), ("test",), ("train", "test")])
def test_audit_of_any_subset_of_splits(splits: tuple, data_dir: Path, tmp_path: Path) -> None:
    root = tmp_path / "chest_xray"
    for split in splits:
        copy_patients(data_dir, root, split, per_class=10 if split == "train" else 2)
    out = tmp_path / "audit"
    proc = _run("data", "audit", "--data-dir", str(root), "--out", str(out), cache_dir=tmp_path)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    doc = json.loads((out / "audit.json").read_text())
    on_disk = {s: {c.name: len(list(c.iterdir())) for c in (root / s).iterdir()} for s in splits}
    assert set(doc["counts"]) == set(splits)
    for s in splits:
        assert doc["counts"][s] == on_disk[s] | {"total": sum(on_disk[s].values())}
    assert doc["n_files"] == sum(c["total"] for c in doc["counts"].values())
    assert ("after_split" in doc) == ("train" in splits)
