"""Ensembles of the top trials: chosen on validation, exported as one model, explained."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from study.report.gradcam import gradcam
from study.report.page import leaderboard_section
from study.search.trial_log import load_trials, objective, write_val_predictions
from study.select.ensemble import (
    ENSEMBLE_FAMILY,
    best_candidate,
    build_ensemble_model,
    candidate_ensembles,
    ensemble_members,
)
from study.select.model_io import export_winner, load_winner

REPO = Path(__file__).resolve().parents[1]
N_VAL = 40


def _write_trial(
    study: Path,
    fam: str,
    tid: str,
    probs: np.ndarray,
    files: list[str],
    labels: np.ndarray,
    auc_exact: float,
    **extra: object,
) -> Path:
    d = study / "trials" / f"{fam}-{tid}"
    d.mkdir(parents=True)
    trial = {
        "family": fam,
        "trial_id": tid,
        "hyperparameters": {"lr": 0.1},
        "val": {"auc": auc_exact, "auc_exact": auc_exact},
        "params": 10,
        "seconds": 1.0,
    }
    (d / "trial.json").write_text(json.dumps(trial | extra))
    write_val_predictions(d, files, labels, probs)
    return d


@pytest.fixture
def study(tmp_path: Path) -> tuple[Path, np.ndarray, dict[str, np.ndarray]]:
    """Four trials scored on the same 40 files; each member's CSV is in its own order."""
    rng = np.random.default_rng(0)
    labels = np.array([0, 1] * (N_VAL // 2))
    files = [f"val/img_{i:03d}.png" for i in range(N_VAL)]
    probs = {}
    for j, (fam, tid) in enumerate([("cnn", "a"), ("cnn", "b"), ("transfer", "c"), ("vit", "d")]):
        p = np.clip(0.5 + (0.4 - 0.08 * j) * (labels - 0.5) + rng.normal(0, 0.25, N_VAL), 0, 1)
        p = np.round(p, 6)
        order = rng.permutation(N_VAL)
        probs[f"{fam}-{tid}"] = p
        auc = roc_auc_score(labels, p)
        _write_trial(tmp_path, fam, tid, p[order], [files[i] for i in order], labels[order], auc)
    return tmp_path, labels, probs


def test_candidates_are_top_k_by_objective_with_the_exact_averaged_auc(study) -> None:
    study_dir, labels, probs = study
    trials = load_trials(study_dir)
    ranked = [f"{t['family']}-{t['trial_id']}" for t in sorted(trials, key=objective)[::-1]]
    ens = candidate_ensembles(trials)
    assert [e.name for e in ens] == ["ens-top2", "ens-top3", "ens-top4"]  # no top5 of 4 trials
    for e in ens:
        rec = e.record()
        k = len(e.members)
        assert rec["family"] == ENSEMBLE_FAMILY and rec["members"] == ranked[:k]
        want = roc_auc_score(labels, np.mean([probs[m] for m in ranked[:k]], axis=0))
        assert objective(rec) == pytest.approx(want, abs=1e-12)
    assert candidate_ensembles(trials, k_values=(3,))[0].name == "ens-top3"


def test_members_must_share_the_input(study) -> None:
    study_dir, labels, probs = study
    trials = load_trials(study_dir)
    best = max(trials, key=objective)
    best["image_size"] = 224  # the best trial's input now differs from all the others
    assert candidate_ensembles(trials) == []
    for t in trials:
        t["image_size"] = 224
    assert len(candidate_ensembles(trials)) == 3


def test_misaligned_predictions_fail_clearly(study) -> None:
    study_dir, labels, _ = study
    files = [f"other/img_{i:03d}.png" for i in range(N_VAL)]
    _write_trial(study_dir, "vit", "z", np.full(N_VAL, 0.99), files, labels, 0.999)
    with pytest.raises(ValueError, match="do not align"):
        candidate_ensembles(load_trials(study_dir))


def test_best_candidate_ranks_singles_and_ensembles_by_one_objective(study) -> None:
    study_dir, _, _ = study
    trials = load_trials(study_dir)
    ens = candidate_ensembles(trials)
    best = best_candidate(trials, ens)
    everything = [*(objective(t) for t in trials), *(objective(e.record()) for e in ens)]
    assert objective(best) == max(everything)
    top = max(trials, key=objective)
    top["val"]["auc_exact"] = 1.0  # a perfect single model beats every ensemble
    assert best_candidate(trials, ens) is top


def test_leaderboard_lists_ensembles_ranked_with_trials(study) -> None:
    study_dir, _, _ = study
    rows = leaderboard_section(study_dir, None)["rows"]
    ens = [r for r in rows if r["family"] == ENSEMBLE_FAMILY]
    assert [r["id"] for r in sorted(ens, key=lambda r: r["id"])] == [
        "ensemble-ens-top2",
        "ensemble-ens-top3",
        "ensemble-ens-top4",
    ]
    assert all(r["members"] and r["auc"] is not None for r in ens) and len(rows) == 4 + 3
    assert [r["objective"] for r in rows] == sorted((r["objective"] for r in rows), reverse=True)
    assert [r["rank"] for r in rows] == list(range(1, 8))


# --------------------------------------------------------------------------- one Keras model


def _member(seed: int) -> keras.Model:
    keras.utils.set_random_seed(seed)
    inp = keras.Input((16, 16, 1))
    x = keras.layers.Conv2D(4, 3, padding="same", activation="relu")(inp)
    x = keras.layers.GlobalAveragePooling2D()(x)
    out = keras.layers.Dense(1, activation="sigmoid")(x)
    return keras.Model(inp, out)


@pytest.fixture(scope="module")
def members() -> list[keras.Model]:
    return [_member(s) for s in (1, 2, 3)]


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    return np.random.default_rng(5).random((6, 16, 16, 1)).astype(np.float32)


def test_exported_ensemble_is_one_model_with_the_mean_output(
    members, images, tmp_path: Path
) -> None:
    model = build_ensemble_model(members, name="ensemble_test")
    assert model.inputs[0].shape[1:] == (16, 16, 1) and len(model.inputs) == 1
    assert len({m.name for m in ensemble_members(model)}) == 3
    want = np.mean([m.predict(images, verbose=0) for m in members], axis=0)
    np.testing.assert_allclose(model.predict(images, verbose=0), want, atol=1e-5)

    info = {"preprocess": {}, "threshold": 0.5, "members": ["a", "b", "c"]}
    saved = export_winner(model, info, tmp_path)
    assert (saved / "saved_model.pb").is_file() and (tmp_path / "winner.keras").is_file()
    np.testing.assert_allclose(load_winner(saved).predict_batch(images), want[:, 0], atol=1e-5)

    np.save(tmp_path / "x.npy", images)
    np.save(tmp_path / "want.npy", want)
    code = (
        "import numpy as np, keras, study.models.layers\n"
        f"m = keras.saving.load_model({str(tmp_path / 'winner.keras')!r})\n"
        f"x = np.load({str(tmp_path / 'x.npy')!r})\n"
        f"want = np.load({str(tmp_path / 'want.npy')!r})\n"
        "np.testing.assert_allclose(m.predict(x, verbose=0), want, atol=1e-5)\n"
        "print('members', len(m.layers))\n"
    )
    run = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-2000:]


def test_ensemble_gradcam_is_the_probability_weighted_mean(members, images, tmp_path) -> None:
    model = build_ensemble_model(members, name="ensemble_cam")
    maps = np.stack([gradcam(m, images) for m in members])
    p = np.stack([m.predict(images, verbose=0)[:, 0] for m in members])
    want = np.einsum("mn,mnhw->nhw", p / p.sum(axis=0), maps)
    got = gradcam(model, images)
    assert got.shape == (6, 16, 16)
    np.testing.assert_allclose(got, want, atol=1e-5)
    assert not np.allclose(got, maps.mean(axis=0), atol=1e-4), "weights must matter"

    model.save(tmp_path / "ens.keras")  # as the service loads it: Winner.keras_model()
    reloaded = keras.saving.load_model(tmp_path / "ens.keras", compile=False)
    np.testing.assert_allclose(gradcam(reloaded, images), want, atol=1e-5)


def test_bfloat16_members_average_in_float32(images) -> None:
    keras.utils.set_random_seed(7)
    inp = keras.Input((16, 16, 1))
    x = keras.layers.Conv2D(4, 3, dtype="mixed_bfloat16")(inp)
    x = keras.layers.GlobalAveragePooling2D(dtype="mixed_bfloat16")(x)
    out = keras.layers.Dense(1, activation="sigmoid", dtype="mixed_bfloat16")(x)
    bf16 = keras.Model(inp, out)
    assert bf16.outputs[0].dtype == "bfloat16"
    model = build_ensemble_model([bf16, _member(8)], name="ensemble_bf16")
    assert model.outputs[0].dtype == "float32"
    got = model.predict(images, verbose=0)
    want = np.mean(
        [np.asarray(m.predict(images, verbose=0), np.float32) for m in ensemble_members(model)],
        axis=0,
    )
    np.testing.assert_allclose(got, want, atol=1e-5)


def test_a_winning_ensemble_is_exported_as_the_studys_one_winner(members, tmp_path) -> None:
    """finish_study's hook: members' best.keras -> one SavedModel + winner.json with members."""
    from types import SimpleNamespace

    import cv2

    from study.data.datasets import SplitArrays
    from study.data.preprocess import PreprocessConfig
    from study.data.records import ImageRecord
    from study.select.calibration import apply_temperature
    from study.select.winner import export_ensemble

    rng = np.random.default_rng(3)
    labels = np.array([0, 1] * 6)
    pre = PreprocessConfig(image_size=16)
    images = rng.integers(0, 256, (12, 16, 16), dtype=np.uint8)
    recs = []
    for i, y in enumerate(labels):  # real files: the shift sets are built from them
        path = tmp_path / "v" / f"{i:02d}.png"
        path.parent.mkdir(exist_ok=True)
        cv2.imwrite(str(path), images[i])
        recs.append(ImageRecord(str(path), int(y), f"p{i}", "normal", "val"))
    split = SplitArrays(recs, images, labels)
    dirs = []
    for i, m in enumerate(members[:2]):
        d = tmp_path / "trials" / f"cnn-{i}"
        d.mkdir(parents=True)
        keras.Model(m.inputs, m.outputs, name=f"functional_{i}").save(d / "best.keras")
        dirs.append(str(d))
    record = {
        "family": ENSEMBLE_FAMILY,
        "trial_id": "ens-top2",
        "members": ["cnn-0", "cnn-1"],
        "member_dirs": dirs,
        "hyperparameters": {},
        "dtype_policy": "float32",
    }
    cfg = SimpleNamespace(
        name="t",
        study_dir=tmp_path,
        batch_size=4,
        min_sensitivity=0.5,
        preprocess=pre,
        image_size=16,
        seed=0,
        objective="val_auc",
    )
    plan = SimpleNamespace(test_source="official", sizes=lambda: {"val": 12, "test": 12})
    data = SimpleNamespace(
        val=split,
        test=split,
        fingerprint="f" * 16,
        plan=plan,
        preprocess=pre,
        cache_dir=tmp_path / "cache",
    )
    data.at = lambda _pre: data
    info, entry = export_ensemble(cfg, data, record, {})
    assert entry["refer_band"]["coverage_target"] == 0.95 and len(entry["robustness"]) == 27
    saved = json.loads((tmp_path / "winner.json").read_text())
    assert saved["members"] == ["cnn-0", "cnn-1"] == info["members"]
    assert saved["family"] == ENSEMBLE_FAMILY and saved["trial"] == "ensemble-ens-top2"
    winner = load_winner(tmp_path / "winner")
    x = split.images[..., None].astype(np.float32) / 255.0
    want = np.mean([m.predict(x, verbose=0)[:, 0] for m in members[:2]], axis=0)
    want = apply_temperature(want, info["calibration"]["temperature"])
    np.testing.assert_allclose(winner.predict_batch(x), want, atol=1e-5)
    assert ensemble_members(winner.keras_model()) is not None
    assert (tmp_path / "families" / ENSEMBLE_FAMILY / "val_predictions.csv").is_file()
