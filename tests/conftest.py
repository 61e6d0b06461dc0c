"""Shared fixtures. Data comes from ../shared (or PNEUMOSCOPE_DATA_DIR / PNEUMOSCOPE_SAMPLES_DIR)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def _dir(env: str, default: Path) -> Path:
    return Path(os.environ.get(env, default)).resolve()


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The Kermany folder in Kaggle layout (train/{NORMAL,PNEUMONIA})."""
    d = _dir("PNEUMOSCOPE_DATA_DIR", REPO.parent / "shared" / "data" / "chest_xray")
    if not d.is_dir():
        pytest.skip(f"LOUD SKIP: no data at {d}; set PNEUMOSCOPE_DATA_DIR")
    return d


@pytest.fixture(scope="session")
def samples_dir() -> Path:
    d = _dir("PNEUMOSCOPE_SAMPLES_DIR", REPO.parent / "shared" / "data" / "samples")
    if not d.is_dir():
        pytest.skip(f"LOUD SKIP: no samples at {d}; set PNEUMOSCOPE_SAMPLES_DIR")
    return d


@pytest.fixture(scope="session")
def artifacts_dir() -> Path:
    """Screenshots and other CI artifacts land here (git-ignored)."""
    d = REPO / "artifacts"
    d.mkdir(exist_ok=True)
    return d


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """With CI=true a skip is a failure: nothing may silently not run in CI."""
    outcome = yield
    report = outcome.get_result()
    if IN_CI and report.skipped:
        report.outcome = "failed"
        report.longrepr = f"skipped in CI (CI=true makes a skip a failure): {item.nodeid}"
