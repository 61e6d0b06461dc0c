"""Cache build time for the training images, and how fast the train pipeline delivers.

    python -m benchmarks.pipeline_bench --data-dir ../shared/data/chest_xray [--image-size 128]

The pipeline must deliver at least 5x what a training step consumes; the
training side comes from ``benchmarks.training_bench`` (custom_cnn, the
cheapest family, is the hungriest consumer).
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.common import write
from study.data.cache import build_cache
from study.data.preprocess import PreprocessConfig
from study.data.records import scan
from study.paths import DEFAULT_DATA_DIR
from study.search.pipeline import AugmentConfig, train_dataset


def run(data_dir: Path, image_size: int, batches: int = 150, batch_size: int = 32) -> list[dict]:
    records = [r for r in scan(data_dir) if r.source_split == "train"]
    paths = [r.path for r in records]
    labels = {r.path: r.label for r in records}
    cfg = PreprocessConfig(image_size=image_size)
    tmp = Path(tempfile.mkdtemp(prefix="pneumoscope-bench-"))
    try:
        cold = build_cache(paths, cfg, tmp, workers=2, progress=False)
        warm = build_cache(paths, cfg, tmp, workers=2, progress=False)
        y = np.array([labels[p] for p in cold.paths])
        ds = train_dataset(cold.images, y, batch_size, seed=0, augment=AugmentConfig())
        it = iter(ds)
        for _ in range(10):  # warm-up: graph tracing and prefetch buffers
            next(it)
        t0 = time.perf_counter()
        for _ in range(batches):
            next(it)
        rate = batches * batch_size / (time.perf_counter() - t0)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return [
        {
            "stage": f"cache build ({len(paths)} images, {image_size}px, 2 threads)",
            "seconds": cold.seconds,
            "images_per_s": len(paths) / cold.seconds,
        },
        {
            "stage": "cache reuse (second run)",
            "seconds": warm.seconds,
            "images_per_s": len(paths) / max(warm.seconds, 1e-9),
        },
        {
            "stage": "train pipeline from cache (oversampling + augmentation)",
            "seconds": batches * batch_size / rate,
            "images_per_s": rate,
        },
    ]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR)
    p.add_argument("--image-size", type=int, default=128)
    a = p.parse_args()
    write("pipeline", run(a.data_dir, a.image_size))


if __name__ == "__main__":
    main()
