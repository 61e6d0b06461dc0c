"""Shared fixtures; data comes from ../shared or PNEUMOSCOPE_DATA_DIR / _SAMPLES_DIR."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
# Debian's Chromium (PLATFORM.md): Playwright cannot download a browser here.
CHROMIUM = Path(os.environ.get("PNEUMOSCOPE_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


@pytest.fixture(autouse=True)
def _float32_policy():
    """Every test starts in float32: a hypermodel's build() sets Keras' global dtype policy
    (mixed_bfloat16 for some families), and a leaked policy changes later tests' numbers."""
    yield
    keras = sys.modules.get("keras")
    if keras is not None:
        keras.mixed_precision.set_global_policy("float32")


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


# A small gate for tests: the production rules on fewer images (about a minute, cached).
TEST_GATE = {"n_fit": 150, "n_calib": 60, "n_variants": 3}


@pytest.fixture(scope="session")
def fitted_gate_dir(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The input gate fitted once per session (study side, as 'run_study.py gate fit')."""
    from study.gate.fit import GateFitConfig, fit_gate

    out = tmp_path_factory.mktemp("gate_study") / "gate"
    fit_gate(out, data_dir, GateFitConfig(**TEST_GATE))
    return out


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """With CI=true a skip is a failure: nothing may silently not run in CI."""
    outcome = yield
    report = outcome.get_result()
    if IN_CI and report.skipped:
        report.outcome = "failed"
        report.longrepr = f"skipped in CI (CI=true makes a skip a failure): {item.nodeid}"


def tiny_study_args(data_dir: Path, root: Path, name: str = "tiny", budget: int = 2) -> list[str]:
    """A study small enough for CI: 2 trials, 2 epochs, 64 px, ~300 images."""
    return [
        "--data-dir",
        str(data_dir),
        "--results-dir",
        str(root / "results"),
        "--cache-dir",
        str(root / "cache"),
        "--weights-dir",
        str(root / "weights"),
        "--name",
        name,
        "--budget",
        str(budget),
        "--max-epochs",
        "2",
        "--image-size",
        "64",
        "--normalise",
        "clahe",
        "--augment",
        "standard",
        "--max-train-images",
        "300",
        "--families",
        "custom_cnn,resnet,efficientnet",
        "--tuner",
        "random",
        "--steps-per-epoch",
        "6",
        "--patience",
        "2",
    ]


def study_env(root: Path) -> dict[str, str]:
    """The environment of a study subprocess, with its own empty Keras cache under ``root``.

    Why: transfer families also take weights from ``$KERAS_HOME/models`` (else
    ``~/.keras/models``), so weights cached on the machine would decide which families run.
    """
    keras_home = root / "keras_home"
    keras_home.mkdir(parents=True, exist_ok=True)
    return {**os.environ, "KERAS_HOME": str(keras_home)}


def run_study_cli(args: list[str], root: Path, timeout: int = 1200) -> str:
    """``python run_study.py ARGS`` as a user runs it (isolated Keras cache); its stdout."""
    import subprocess
    import sys

    proc = subprocess.run(
        [sys.executable, str(REPO / "run_study.py"), *args],
        cwd=REPO,
        env=study_env(root),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    (root / "study.log").write_text(proc.stdout + "\n" + proc.stderr)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout


@pytest.fixture(scope="session")
def tiny_study(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Run one tiny study in a subprocess (as a user would) and return results/<study>."""
    root = tmp_path_factory.mktemp("tiny_study")
    run_study_cli(tiny_study_args(data_dir, root), root)
    return root / "results" / "tiny"


def copy_patients(data_dir: Path, root: Path, split: str, per_class: int = 3) -> Path:
    """Copy every train image of the first ``per_class`` patients with 2+ images (PNEUMONIA)
    or of ``per_class`` patients (NORMAL) into root/<split>/<CLASS>/ (Kaggle layout)."""
    import shutil

    from study.data.records import CLASS_NAMES, patient_and_subtype

    for label, cls in enumerate(CLASS_NAMES):
        by_patient: dict[str, list[Path]] = {}
        for f in sorted((data_dir / "train" / cls).iterdir()):
            by_patient.setdefault(patient_and_subtype(f.name, label)[0], []).append(f)
        min_images = 2 if label else 1
        chosen = [fs for fs in by_patient.values() if len(fs) >= min_images][:per_class]
        dst = root / split / cls
        dst.mkdir(parents=True, exist_ok=True)
        for f in (f for fs in chosen for f in fs):
            shutil.copy2(f, dst / f.name)
    return root
