"""Issue #12: input hyperparameters with lazy caches, the shift sample, --objective re-ranking
from saved predictions, domain randomisation, and the finalists' operating point."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from search_spaces.inputs import InputChoice, InputSpace, declare_inputs
from study.data.augment import AUGMENTATIONS
from study.data.preprocess import PreprocessConfig
from study.search.trial_inputs import trial_preprocess
from study.search.trial_log import objective
from tests.conftest import run_study_cli, tiny_study_args


def _trial(name: str, val: float, shift: float | None) -> dict:
    return {
        "family": "f",
        "trial_id": name,
        "val": {"auc_exact": val},
        "shift": {"auc_exact": shift},
    }


def test_objectives_rank_from_saved_scores() -> None:
    sharp, robust = _trial("sharp", 0.99, 0.80), _trial("robust", 0.97, 0.95)
    best = {
        k: max([sharp, robust], key=lambda t: objective(t, k))["trial_id"]
        for k in ("val_auc", "shift_auc", "mean_auc")
    }
    assert best == {"val_auc": "sharp", "shift_auc": "robust", "mean_auc": "robust"}
    assert objective(_trial("old", 0.9, None), "shift_auc") == 0.9  # older trials: clean AUC
    with pytest.raises(ValueError, match="unknown objective"):
        objective(sharp, "accuracy")


def test_input_hyperparameters_are_searched_and_fixed_when_single() -> None:
    import keras_tuner as kt

    hp = kt.HyperParameters()
    choice = declare_inputs(hp, InputSpace((64, 96), ("clahe", "none"), ("standard", "domain")))
    assert choice == InputChoice(64, "clahe", 2.0, "standard")  # the first values by default
    assert {p.name for p in hp.space} == {"image_size", "normalise", "clahe_clip", "augment"}
    hp.values["normalise"] = "none"
    assert not hp.is_active("clahe_clip")  # the clip limit only under CLAHE
    fixed = kt.HyperParameters()
    declare_inputs(fixed, InputSpace.fixed(48))
    assert all(isinstance(p, kt.engine.hyperparameters.Fixed) for p in fixed.space)


def test_the_clip_limit_only_keys_the_cache_under_clahe() -> None:
    base = PreprocessConfig()
    a = trial_preprocess(base, InputChoice(96, "none", 2.0, "standard"))
    b = trial_preprocess(base, InputChoice(96, "none", 4.0, "domain"))
    assert a == b and a.image_size == 96  # same pixels, one cache
    c = trial_preprocess(base, InputChoice(96, "clahe", 4.0, "standard"))
    assert c.clahe_clip == 4.0 and c.key() != a.key()


def test_domain_randomisation_is_deterministic_keeps_the_shape_and_is_stronger() -> None:
    import tensorflow as tf

    from study.search.pipeline import augment_batch

    rng = np.random.default_rng(0)
    x = tf.constant(rng.uniform(0.2, 0.8, (16, 48, 48, 1)).astype(np.float32))
    change = {name: [] for name in AUGMENTATIONS}
    for s in range(6):
        seed = tf.constant([s, 1], tf.int64)
        for name, cfg in AUGMENTATIONS.items():
            out = augment_batch(x, seed, cfg)
            assert out.shape == x.shape  # static: a traced model needs it
            np.testing.assert_array_equal(out.numpy(), augment_batch(x, seed, cfg).numpy())
            assert out.numpy().min() >= 0.0 and out.numpy().max() <= 1.0
            change[name].append(float(np.abs(out.numpy() - x.numpy()).mean()))
    assert np.mean(change["domain"]) > np.mean(change["standard"])


def test_domain_randomised_training_stream_has_static_shapes() -> None:
    from study.search.pipeline import train_dataset

    x = np.random.default_rng(0).integers(0, 255, (20, 32, 32), np.uint8)
    ds = train_dataset(x, np.array([0, 1] * 10), 8, 0, AUGMENTATIONS["domain"])
    assert tuple(ds.element_spec[0].shape) == (8, 32, 32, 1)


def test_shift_sample_rows_equal_the_grid_rows(data_dir: Path, tmp_path: Path) -> None:
    from study.data.shift import build_shift_sample, build_shift_set

    files = sorted(str(p) for p in (data_dir / "train" / "NORMAL").glob("*.jpeg"))[:10]
    cfg = PreprocessConfig(image_size=32)
    sample = build_shift_sample(files, cfg, tmp_path, seed=3)
    grid = build_shift_set(files, cfg, tmp_path / "grid", seed=3, progress=False)
    assert sample.paths == grid.paths and len(set(sample.conditions)) > 1
    for i, cond in enumerate(sample.conditions):
        np.testing.assert_array_equal(sample.images[i], grid.images(cond)[i])
    again = build_shift_sample(files[::-1], cfg, tmp_path, seed=3)  # reused, order-free
    np.testing.assert_array_equal(again.images, sample.images)
    assert again.conditions == sample.conditions


@pytest.fixture(scope="module")
def searched_study(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny study whose trials search size, normalisation and augmentation."""
    root = tmp_path_factory.mktemp("searched")
    out = run_study_cli(_searched_args(data_dir, root), root)
    assert "budget of 4 trials done" in out  # no trial failed
    return root / "results" / "inputs"


def _searched_args(data_dir: Path, root: Path) -> list[str]:
    args = tiny_study_args(data_dir, root, name="inputs", budget=4)
    for flag, value in (
        ("--image-size", "48,64"),
        ("--normalise", "clahe,none"),
        ("--augment", "standard,domain"),
        ("--families", "custom_cnn"),
    ):
        args[args.index(flag) + 1] = value
    return args


def test_each_trial_trains_on_its_own_input(searched_study: Path) -> None:
    import keras

    import study.models.layers  # noqa: F401

    trials = [json.loads(p.read_text()) for p in sorted(searched_study.glob("trials/*/trial.json"))]
    assert len(trials) == 4
    for t in trials:
        hp, pre = t["hyperparameters"], t["preprocess"]
        assert pre["image_size"] == hp["image_size"] == t["image_size"]
        assert pre["normalise"] == hp["normalise"] and t["augment"] == hp["augment"]
        model = keras.saving.load_model(
            searched_study / "trials" / f"custom_cnn-{t['trial_id']}" / "best.keras"
        )
        assert model.inputs[0].shape[1] == hp["image_size"]
        assert t["shift"]["auc_exact"] is not None
        assert (
            searched_study / "trials" / f"custom_cnn-{t['trial_id']}" / "shift_predictions.csv"
        ).is_file()
    winner = json.loads((searched_study / "winner.json").read_text())
    # A single winner, or an ensemble whose members all share the winner's input.
    for name in winner.get("members") or [winner["trial"]]:
        won = next(t for t in trials if f"custom_cnn-{t['trial_id']}" == name)
        assert winner["preprocess"] == won["preprocess"]
        assert winner["image_size"] == won["image_size"]
    assert winner["calibration"]["temperature"] > 0 and "refer_band" in winner
    report = (searched_study / "report.html").read_text()
    assert 'id="robustness-table"' in report and 'id="shift-threshold-table"' in report


def test_another_objective_reranks_without_training(
    searched_study: Path, data_dir: Path, tmp_path: Path
) -> None:
    import shutil

    copy = tmp_path / "results" / "inputs"
    shutil.copytree(searched_study, copy)
    before = sorted(p.name for p in (copy / "trials").iterdir())
    args = _searched_args(data_dir, searched_study.parent.parent)
    args[args.index("--results-dir") + 1] = str(tmp_path / "results")  # folders: not in the key
    out = run_study_cli([*args, "--objective", "shift_auc"], tmp_path)
    assert " epoch " not in out  # no trial trained
    assert sorted(p.name for p in (copy / "trials").iterdir()) == before
    summary = json.loads((copy / "summary.json").read_text())
    trials = [
        json.loads(p.read_text()) | {"dir": str(p.parent)}
        for p in (copy / "trials").glob("*/trial.json")
    ]
    best = max(trials, key=lambda t: t["shift"]["auc_exact"])
    assert (
        summary["objective"]
        == "shift_auc"
        == json.loads((copy / "winner.json").read_text())["objective"]
    )
    assert summary["families"]["custom_cnn"]["trial"] == f"custom_cnn-{best['trial_id']}"


def test_study_table_scores_every_candidate(
    searched_study: Path, samples_dir: Path, tmp_path: Path
) -> None:
    from benchmarks import study_table

    study_table.main(
        ["--study", str(searched_study), "--samples", str(samples_dir), "--out-dir", str(tmp_path)]
    )
    doc = json.loads((tmp_path / "study_table.json").read_text())
    rows = {r["candidate"]: r for r in doc["rows"]}
    assert {
        "best custom_cnn",
        "winner by val_auc",
        "winner by shift_auc",
        "winner by mean_auc",
    } <= set(rows)
    for r in rows.values():
        for k in ("val AUC", "shift AUC", "carved test AUC", "official val AUC (n=16)"):
            assert 0.0 <= r[k] <= 1.0, (k, r)
    sets = {(r["set"], r["rule"]) for r in doc["winner"]}
    assert ("official val originals (n=16)", "clean rule") in sets
    assert ("carved test", "shift rule (used)") in sets and len(sets) == 4
    assert "load average" in (tmp_path / "study_table.md").read_text()


def test_each_family_gets_an_equal_share_of_the_time_left() -> None:
    import time

    from study.search.runner import family_deadline

    now = time.monotonic()
    assert family_deadline(None, 3) is None
    share = family_deadline(now + 90.0, 3) - now
    assert 29.0 < share < 31.0  # a third of the time left, not all of it
    assert abs(family_deadline(now + 90.0, 1) - (now + 90.0)) < 1.0  # the last takes the rest
    assert family_deadline(now - 5.0, 2) <= time.monotonic() + 0.1  # past: no time at all


def test_random_clahe_is_the_preprocessing_clahe_on_the_picked_images() -> None:
    from study.data.preprocess import normalise
    from study.search.pipeline import _clahe_images

    rng = np.random.default_rng(1)
    batch = rng.uniform(0, 1, (3, 32, 32, 1)).astype(np.float32)
    out = _clahe_images(batch, np.array([1.5, 3.0, 2.0]), np.array([True, False, True]))
    np.testing.assert_array_equal(out[1], batch[1])  # not picked: unchanged
    u8 = np.round(batch[2, ..., 0] * 255).astype(np.uint8)
    want = normalise(u8, PreprocessConfig(normalise="clahe", clahe_clip=2.0)) / 255.0
    np.testing.assert_allclose(out[2, ..., 0], want, atol=1e-6)
    assert not np.allclose(out[0], batch[0])
    assert AUGMENTATIONS["domain"].clahe_prob > 0 == AUGMENTATIONS["standard"].clahe_prob
