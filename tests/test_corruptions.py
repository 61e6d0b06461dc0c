"""Hospital/device corruptions and the shift validation set built from them."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from study.data import preprocess as pp
from study.data.cache import build_cache
from study.data.corruptions import REGISTRY, SEVERITIES, TABLE, Corruption, corrupt
from study.data.shift import CONDITIONS, ShiftSet, build_shift_set

CFG = pp.PreprocessConfig(image_size=64)
# These two have no random choice: a device's JPEG quality or pixel pitch is fixed.
SEED_FREE = {Corruption.JPEG, Corruption.RESOLUTION}


def _train_files(data_dir: Path, n: int) -> list[Path]:
    normal = sorted((data_dir / "train" / "NORMAL").glob("*.jpeg"))
    pneumonia = sorted((data_dir / "train" / "PNEUMONIA").glob("*.jpeg"))
    return normal[: n // 2] + pneumonia[: n - n // 2]


@pytest.fixture(scope="module")
def images(data_dir: Path) -> list[np.ndarray]:
    """Real windowed X-rays: the 8-bit images the corruptions apply to."""
    return [pp.windowed(pp.decode(f.read_bytes()).pixels, CFG) for f in _train_files(data_dir, 4)]


def _mad(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.int16) - b.astype(np.int16)).mean())


def test_the_closed_set_has_nine_corruptions_each_with_a_function_and_three_severities() -> None:
    assert len(Corruption) == 9
    assert set(REGISTRY) == set(TABLE) == set(Corruption)
    assert all(len(TABLE[c].params) == len(SEVERITIES) == 3 for c in Corruption)


@pytest.mark.parametrize("name", list(Corruption))
def test_same_seed_same_output_and_the_rng_matters(name: Corruption, images) -> None:
    img = images[0]
    for s in SEVERITIES:
        a = corrupt(img, name, s, np.random.default_rng(7))
        np.testing.assert_array_equal(a, corrupt(img, name, s, np.random.default_rng(7)))
    outs = {corrupt(img, name, 2, np.random.default_rng(seed)).tobytes() for seed in range(8)}
    if name in SEED_FREE:
        assert len(outs) == 1
    else:
        assert len(outs) > 1  # another seed makes other random choices


@pytest.mark.parametrize("name", list(Corruption))
def test_output_is_a_changed_uint8_image_of_the_same_shape(name: Corruption, images) -> None:
    for img in images:
        out = REGISTRY[name](img, 1, np.random.default_rng(0))
        assert out.shape == img.shape and out.dtype == np.uint8
        assert 0 < _mad(out, img) < 128 and out.std() > 5


@pytest.mark.parametrize("name", list(Corruption))
def test_effect_grows_with_severity(name: Corruption, images) -> None:
    for img in images:
        for seed in range(4):
            mad = [
                _mad(corrupt(img, name, s, np.random.default_rng(seed)), img) for s in SEVERITIES
            ]
            assert mad[0] < mad[1] < mad[2], (name, seed, mad)


@pytest.mark.parametrize("name", list(Corruption))
@pytest.mark.parametrize("severity", [0, 4, -1, 1.5, True])
def test_invalid_severity_is_refused(name: Corruption, severity, images) -> None:
    with pytest.raises(ValueError, match="severity must be one of"):
        REGISTRY[name](images[0], severity, np.random.default_rng(0))


def test_unknown_corruption_and_non_grey_input_are_refused(images) -> None:
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="flare"):
        corrupt(images[0], "flare", 1, rng)
    with pytest.raises(ValueError, match="uint8 HxW"):
        corrupt(images[0].astype(np.float32), "noise", 1, rng)
    with pytest.raises(ValueError, match="uint8 HxW"):
        corrupt(np.dstack([images[0]] * 3), "noise", 1, rng)


@pytest.fixture(scope="module")
def val_files(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    """12 real images plus one truncated file, which must be skipped and listed."""
    files = [str(f) for f in _train_files(data_dir, 12)]
    bad = tmp_path_factory.mktemp("bad") / "truncated.jpeg"
    bad.write_bytes(Path(files[0]).read_bytes()[:300])
    return [*files, str(bad)]


@pytest.fixture(scope="module")
def shift(val_files: list[str], tmp_path_factory: pytest.TempPathFactory) -> ShiftSet:
    cache = tmp_path_factory.mktemp("cache")
    return build_shift_set(val_files, CFG, cache, seed=42, workers=2, progress=False)


def test_shift_set_has_every_condition_in_the_training_shape(shift: ShiftSet, val_files) -> None:
    assert not shift.reused and len(shift.conditions) == 27 == len(set(shift.conditions))
    assert shift.paths == sorted(val_files[:-1]) and list(shift.failed) == [val_files[-1]]
    for cond in shift.conditions:
        arr = shift.images(cond)
        assert arr.shape == (12, 64, 64) and arr.dtype == np.uint8
        assert not np.array_equal(arr, shift.clean), cond
    pooled, tags = shift.all()
    assert pooled.shape == (27 * 12, 64, 64) and len(tags) == len(pooled)
    np.testing.assert_array_equal(pooled[tags.index(("noise", 2))], shift.images(("noise", 2))[0])
    with pytest.raises(KeyError):
        shift.images(("noise", 0))


def test_second_build_is_reused_in_any_input_order(shift: ShiftSet, val_files, capsys) -> None:
    again = build_shift_set(val_files[::-1], CFG, shift.directory.parents[1], seed=42)
    assert again.reused and again.directory == shift.directory
    assert "shift: reused" in capsys.readouterr().err
    np.testing.assert_array_equal(again.images(("jpeg", 3)), shift.images(("jpeg", 3)))


def test_rebuild_elsewhere_with_one_worker_gives_identical_images(
    shift: ShiftSet, val_files, tmp_path: Path, capsys
) -> None:
    other = build_shift_set(val_files, CFG, tmp_path, seed=42, workers=1)
    assert not other.reused and "shift: built" in capsys.readouterr().err
    for cond in CONDITIONS:
        np.testing.assert_array_equal(other.images(cond), shift.images(cond))
    np.testing.assert_array_equal(other.clean, shift.clean)
    shutil.rmtree(other.directory)


def test_another_seed_is_another_set(shift: ShiftSet, val_files, tmp_path: Path) -> None:
    other = build_shift_set(val_files, CFG, tmp_path, seed=43, workers=2, progress=False)
    assert other.directory.name != shift.directory.name
    assert not np.array_equal(other.images(("noise", 1)), shift.images(("noise", 1)))
    np.testing.assert_array_equal(other.clean, shift.clean)


def test_clean_images_equal_the_study_cache(shift: ShiftSet, val_files, tmp_path: Path) -> None:
    """No train/serve skew: without corruption the shift chain is the training cache."""
    cache = build_cache(val_files, CFG, tmp_path, workers=2, progress=False)
    assert cache.paths == shift.paths
    np.testing.assert_array_equal(shift.clean, cache.take(shift.paths))


def test_corruption_gallery_draws_a_png(data_dir: Path, tmp_path: Path) -> None:
    from study.report.data_figures import corruption_gallery

    out = corruption_gallery(_train_files(data_dir, 1)[0], CFG, tmp_path / "g.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 50_000
