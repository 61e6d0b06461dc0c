"""The study end to end on a tiny subset: run, resume, reload, evaluate, early stopping."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import REPO, study_env, tiny_study_args

PY = sys.executable


def _run(
    args: list[str], timeout: int = 600, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    return subprocess.run(
        [PY, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout
    )


def test_tiny_study_writes_everything(tiny_study: Path) -> None:
    for name in (
        "config.json",
        "splits.json",
        "audit.json",
        "summary.json",
        "winner.json",
        "winner.keras",
        "winner/saved_model.pb",
        "families/custom_cnn/winner/saved_model.pb",
        "families/custom_cnn/winner.json",
        "figures/samples.png",
    ):
        assert (tiny_study / name).exists(), name
    info = json.loads((tiny_study / "winner.json").read_text())
    for key in (
        "class_names",
        "threshold",
        "threshold_rule",
        "preprocess",
        "image_size",
        "family",
        "hyperparameters",
        "validation",
        "test",
        "study",
        "packages",
        "data_fingerprint",
        "weights",
    ):
        assert key in info, key
    assert info["test_source"] == "carved from train"
    trials = sorted((tiny_study / "trials").glob("*/trial.json"))
    assert len(trials) == 2
    t = json.loads(trials[0].read_text())
    assert {"hyperparameters", "epochs_run", "best_epoch", "verdict", "val"} <= set(t)
    assert (trials[0].parent / "history.csv").is_file()
    assert (trials[0].parent / "val_predictions.csv").is_file()
    summary = json.loads((tiny_study / "summary.json").read_text())
    assert summary["trial_seconds"] > 0 and summary["n_trials"] == 2
    # No ImageNet weights in the test's weights dir: both transfer families are skipped, loudly.
    assert set(summary["skipped"]) == {"resnet", "efficientnet"}
    assert all("weights" in reason for reason in summary["skipped"].values())
    splits = json.loads((tiny_study / "splits.json").read_text())
    seen: dict[str, str] = {}
    for split, patients in splits["patients"].items():
        for p in patients:
            assert seen.setdefault(p, split) == split, f"patient {p} in two splits"


def test_winner_reloads_in_fresh_process(tiny_study: Path, samples_dir: Path) -> None:
    import keras

    import study.models.layers  # noqa: F401
    from study.data.preprocess import PreprocessConfig, load_for_model
    from study.select.calibration import apply_temperature
    from study.select.conformal import ReferBand

    files = sorted((samples_dir / "kermany_full_res" / "val").glob("*/*.jpeg"))[:3]
    files.append(samples_dir / "other_chest_xray" / "covidrad_Normal-12.png")
    out = _run(["-m", "study.predict", "--model", str(tiny_study / "winner"), *map(str, files)])
    assert out.returncode == 0, out.stderr[-2000:]
    rows = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
    assert [r["file"] for r in rows] == [str(f) for f in files]
    info = json.loads((tiny_study / "winner.json").read_text())
    cfg = PreprocessConfig.from_dict(info["preprocess"])
    model = keras.saving.load_model(tiny_study / "winner.keras")
    x = np.stack([load_for_model(f.read_bytes(), cfg) for f in files])
    # The served probability is the temperature-scaled one (winner.json "calibration").
    expected = apply_temperature(
        model.predict(x, verbose=0).reshape(-1), info["calibration"]["temperature"]
    )
    got = np.array([r["probability_pneumonia"] for r in rows])
    np.testing.assert_allclose(got, expected, atol=1e-5)
    band = ReferBand.from_dict(info["refer_band"])
    for r, p in zip(rows, expected, strict=True):
        decided = "PNEUMONIA" if p >= info["threshold"] else "NORMAL"
        assert r["label"] == ("UNCERTAIN" if band.contains(p) else decided)
        assert r["threshold"] == info["threshold"]


def test_evaluate_prints_the_fields(tiny_study: Path, samples_dir: Path) -> None:
    out = _run(
        [
            "-m",
            "study.evaluate",
            "--model",
            str(tiny_study / "winner"),
            "--data-dir",
            str(samples_dir / "kermany_full_res"),
            "--split",
            "val",
        ]
    )
    assert out.returncode == 0, out.stderr[-2000:]
    res = json.loads(out.stdout.strip().splitlines()[-1])
    for key in (
        "n",
        "accuracy",
        "auc",
        "sensitivity",
        "specificity",
        "precision",
        "f1",
        "threshold",
    ):
        assert key in res, key
    assert set(res["confusion"]) == {"tn", "fp", "fn", "tp"}
    assert res["n"] == 16


def test_study_resumes_after_kill(data_dir: Path, tmp_path: Path) -> None:
    args = tiny_study_args(data_dir, tmp_path, name="resume", budget=2)
    args[args.index("--max-epochs") + 1] = "3"
    args[args.index("--steps-per-epoch") + 1] = "25"
    args[args.index("--patience") + 1] = "5"
    study = tmp_path / "results" / "resume"
    env = study_env(tmp_path)  # transfer families skipped whatever ~/.keras holds
    proc = subprocess.Popen(
        [PY, "run_study.py", *args],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    first = study / "trials" / "custom_cnn-0" / "trial.json"
    second_hist = study / "trials" / "custom_cnn-1" / "history.csv"
    deadline = time.monotonic() + 900
    try:
        # Kill mid-way through the second trial, after its first epoch.
        while time.monotonic() < deadline and proc.poll() is None:
            if second_hist.is_file() and len(second_hist.read_text().splitlines()) >= 2:
                break
            time.sleep(0.1)
        assert proc.poll() is None, "study finished before it could be killed"
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    first_mtime = first.stat().st_mtime_ns
    out = _run(["run_study.py", *args], timeout=900, env=env)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    assert "resuming study" in out.stdout
    assert first.stat().st_mtime_ns == first_mtime, "a finished trial was rerun"
    # The progress lines carry the count and best-so-far over from the killed run.
    first_auc = json.loads(first.read_text())["val"]["auc"]
    lines = [ln for ln in out.stdout.splitlines() if ln.startswith("trial ")]
    assert lines and all(ln.startswith("trial 2/2 ") for ln in lines), lines
    shown = [float(ln.split(" best=")[1].split()[0]) for ln in lines]
    assert min(shown) >= round(first_auc, 4) - 1e-4, (first_auc, lines)
    epochs = [line.split(",")[0] for line in second_hist.read_text().splitlines()[1:]]
    assert epochs == ["0", "1", "2"], f"killed trial did not continue where it was: {epochs}"
    assert (study / "winner" / "saved_model.pb").is_file()


def test_early_stopping_stops_a_flat_run(tmp_path: Path) -> None:
    from types import SimpleNamespace

    import keras
    import keras_tuner as kt

    from search_spaces.inputs import InputChoice
    from study.data.datasets import SplitArrays
    from study.data.preprocess import PreprocessConfig
    from study.data.records import ImageRecord
    from study.data.shift import ShiftSample
    from study.search.pipeline import eval_dataset, train_dataset
    from study.search.trial_inputs import TrialInputs
    from study.search.trial_log import load_trials
    from study.search.tuning import StudyProgress, TrialContext, make_tuner

    class Frozen(kt.HyperModel):
        """Learning rate 0: the objective can never improve."""

        def build(self, hp):
            hp.Fixed("lr", 0.0)
            inp = keras.Input((16, 16, 1))
            out = keras.layers.Dense(1, activation="sigmoid")(keras.layers.Flatten()(inp))
            m = keras.Model(inp, out)
            m.compile(
                keras.optimizers.SGD(0.0),
                "binary_crossentropy",
                metrics=[keras.metrics.AUC(name="auc")],
            )
            return m

    rng = np.random.default_rng(0)
    x = rng.integers(0, 255, (64, 16, 16), dtype=np.uint8)
    y = np.array([0, 1] * 32)
    val = eval_dataset(x[:32], y[:32], 16)
    paths = [str(i) for i in range(32)]
    inputs = TrialInputs(
        InputChoice(16, "clahe", 2.0, "standard"),
        PreprocessConfig(image_size=16),
        train_dataset(x, y, 16, 0),
        val,
        SplitArrays(
            [ImageRecord(p, int(c), p, "", "val") for p, c in zip(paths, y[:32], strict=True)],
            x[:32],
            y[:32],
        ),
        ShiftSample(paths, [("noise", 1)] * 32, x[:32]),
        y[:32],
        val,
    )
    source = SimpleNamespace(for_values=lambda values: inputs)
    ctx = TrialContext(tmp_path, "frozen", 2, StudyProgress(1), source, "none", 0, None, 1)
    tuner = make_tuner("random", Frozen(), ctx, max_epochs=10, seed=0)
    tuner.search(steps_per_epoch=2, epochs=10, verbose=0)
    (trial,) = load_trials(tmp_path)
    assert trial["epochs_run"] == 3 and trial["stopped_early"]


@pytest.mark.parametrize(
    "budget,fams,expected", [(50, ["a", "b"], [25, 25]), (5, ["a", "b", "c"], [2, 2, 1])]
)
def test_budget_is_shared_equally(budget: int, fams: list[str], expected: list[int]) -> None:
    from study.search.runner import share_budget

    assert list(share_budget(budget, fams).values()) == expected


def test_hyperband_promotes_trials(data_dir: Path, tmp_path: Path) -> None:
    """Hyperband continues promoted trials from their predecessor's checkpoint."""
    args = tiny_study_args(data_dir, tmp_path, name="hb", budget=4)
    args[args.index("--families") + 1] = "custom_cnn"
    args[args.index("--tuner") + 1] = "hyperband"
    args[args.index("--max-epochs") + 1] = "3"
    args[args.index("--steps-per-epoch") + 1] = "3"
    out = _run(["run_study.py", *args], timeout=900)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    trials = [
        json.loads(p.read_text())
        for p in (tmp_path / "results/hb/trials").glob("*/*.json")
        if p.name == "trial.json"
    ]
    assert len(trials) == 4
    promoted = [t for t in trials if "tuner/trial_id" in t["hyperparameters"]]
    assert promoted, "no trial was promoted to a later Hyperband round"
    assert all(t["hyperparameters"]["tuner/epochs"] > 1 for t in promoted)
    for t in promoted:  # it trains only the epochs after its predecessor's
        hp = t["hyperparameters"]
        assert t["epochs_planned"] == hp["tuner/epochs"] - hp["tuner/initial_epoch"]


@pytest.mark.parametrize(
    ("rows", "expected"),
    [
        ([{"auc": 0.95, "val_auc": 0.50}, {"auc": 0.99, "val_auc": 0.50}], "no signal"),
        ([{"auc": 0.99, "val_auc": 0.90}, {"auc": 0.999, "val_auc": 0.91}], "overfitting"),
        ([{"auc": 0.70, "val_auc": 0.75}, {"auc": 0.80, "val_auc": 0.80}], "underfitting"),
        ([{"auc": 0.97, "val_auc": 0.96}, {"auc": 0.98, "val_auc": 0.97}], "good fit"),
        ([{"auc": 0.97, "val_auc": 0.96}], "too short"),
    ],
)
def test_fit_verdict_follows_its_rule(rows: list[dict[str, float]], expected: str) -> None:
    from study.search.trial_log import fit_verdict

    hist = [{"loss": 0.5 - 0.1 * i, "val_loss": 0.5, **r} for i, r in enumerate(rows)]
    assert fit_verdict(hist)[0] == expected


def test_binned_auc_of_half_is_not_no_signal_when_the_model_ranks_well() -> None:
    """Keras' binned AUC reads 0.5 when all probabilities bunch near 1; the exact AUC decides."""
    from study.search.trial_log import fit_verdict

    hist = [{"loss": 0.4, "val_loss": 0.5, "auc": 0.97, "val_auc": 0.5}] * 2
    assert fit_verdict(hist)[0] == "no signal"
    assert fit_verdict(hist, exact_auc=0.959)[0] != "no signal"
    assert fit_verdict(hist, exact_auc=0.52)[0] == "no signal"
