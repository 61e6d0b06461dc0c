"""Cache reuse, class balance and seeded augmentation of the tf.data pipelines."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from study.data.cache import build_cache
from study.data.preprocess import PreprocessConfig, scale
from study.data.records import scan
from study.search.pipeline import AugmentConfig, eval_dataset, train_dataset


@pytest.fixture(scope="module")
def subset(data_dir: Path) -> list:
    recs = scan(data_dir)
    normal = [r for r in recs if r.label == 0][:30]
    pneu = [r for r in recs if r.label == 1][:90]  # 1:3, like the real train split
    return normal + pneu


def test_cache_is_built_once_then_reused(subset: list, tmp_path: Path) -> None:
    paths = [r.path for r in subset]
    cfg = PreprocessConfig(image_size=48)
    first = build_cache(paths, cfg, tmp_path, progress=False)
    second = build_cache(paths, cfg, tmp_path, progress=False)
    assert not first.reused and second.reused
    assert second.directory == first.directory
    np.testing.assert_array_equal(first.images, second.images)
    other = build_cache(
        paths, PreprocessConfig(image_size=48, normalise="none"), tmp_path, progress=False
    )
    assert not other.reused and other.directory != first.directory  # keyed by config


def test_corrupt_file_is_skipped_and_listed(subset: list, tmp_path: Path) -> None:
    bad = tmp_path / "bad.jpeg"
    bad.write_bytes(b"\xff\xd8\xff\xe0garbage")
    cache = build_cache(
        [subset[0].path, str(bad)], PreprocessConfig(image_size=32), tmp_path / "c", progress=False
    )
    assert cache.paths == [subset[0].path] and str(bad) in cache.failed


def _arrays(subset: list, tmp_path: Path) -> tuple[np.ndarray, np.ndarray]:
    cache = build_cache(
        [r.path for r in subset], PreprocessConfig(image_size=32), tmp_path, progress=False
    )
    label = {r.path: r.label for r in subset}
    return cache.images, np.array([label[p] for p in cache.paths])


def test_oversampling_balances_the_stream(subset: list, tmp_path: Path) -> None:
    x, y = _arrays(subset, tmp_path)
    assert y.mean() == pytest.approx(0.75)
    labels = np.concatenate([b[1].numpy().ravel() for b in train_dataset(x, y, 32, 0).take(40)])
    assert abs(labels.mean() - 0.5) < 0.05, labels.mean()


def test_same_seed_same_batches_other_seed_other_batches(subset: list, tmp_path: Path) -> None:
    x, y = _arrays(subset, tmp_path)

    def batches(seed: int) -> list[np.ndarray]:
        return [b[0].numpy() for b in train_dataset(x, y, 8, seed, AugmentConfig()).take(3)]

    a, b, c = batches(7), batches(7), batches(8)
    assert all(np.array_equal(i, j) for i, j in zip(a, b, strict=True))
    assert not np.array_equal(a[0], c[0])
    assert a[0].min() >= 0.0 and a[0].max() <= 1.0


def test_augmentation_changes_images_but_eval_does_not(subset: list, tmp_path: Path) -> None:
    x, y = _arrays(subset, tmp_path)
    ev = np.concatenate([b[0].numpy() for b in eval_dataset(x, y, 16)])
    np.testing.assert_array_equal(ev[..., 0], scale(x))
    plain = next(iter(train_dataset(x, y, 8, 3, augment=None)))[0].numpy()
    aug = next(iter(train_dataset(x, y, 8, 3, augment=AugmentConfig(noise_std=0.0))))[0].numpy()
    assert np.abs(plain - aug).mean() > 0.01
