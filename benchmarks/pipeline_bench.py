"""Cache build time for the training images, how fast the train pipeline delivers, and
whether it keeps up with training when both share the cores.

    python -m benchmarks.pipeline_bench --data-dir ../shared/data/chest_xray [--image-size 128]

Two results: ``pipeline`` (cache build, cache reuse, pipeline alone) and
``pipeline_demand``, measured in one process: the pipeline alone, a custom CNN (its
default search point, the cheapest and so the hungriest consumer, in its ``auto``
precision) training alone on one cached in-memory batch, and the same CNN training fed by
the real pipeline. If training fed by the pipeline is clearly slower than training alone,
the pipeline is the bottleneck.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import RESULTS, load_average, write
from study.data.cache import build_cache
from study.data.preprocess import PreprocessConfig
from study.data.records import scan
from study.paths import DEFAULT_DATA_DIR
from study.search.pipeline import AugmentConfig, train_dataset

BOTTLENECK = 0.9  # fed by the pipeline below this fraction of training alone: bottleneck


def pipeline_rate(ds: Any, batches: int, batch_size: int, warmup: int = 10) -> float:
    """Images per second the dataset delivers, after ``warmup`` batches (tracing, buffers)."""
    it = iter(ds)
    for _ in range(warmup):
        next(it)
    t0 = time.perf_counter()
    for _ in range(batches):
        next(it)
    return batches * batch_size / (time.perf_counter() - t0)


def fit_rate(model: Any, ds: Any, steps: int, batch_size: int, warmup: int = 3) -> float:
    """Images per second ``model.fit`` trains on ``ds``, timed between step ends inside one
    call, so tracing, the first ``warmup`` steps and fit's own start-up are left out."""
    import keras

    ends: list[float] = []
    clock = keras.callbacks.LambdaCallback(
        on_train_batch_end=lambda batch, logs: ends.append(time.perf_counter())
    )
    model.fit(
        ds, epochs=1, steps_per_epoch=warmup + steps, verbose=0, shuffle=False, callbacks=[clock]
    )
    return steps * batch_size / (ends[-1] - ends[warmup - 1])


def demand(ds: Any, image_size: int, steps: int, batch_size: int) -> tuple[list[dict], dict]:
    """Pipeline alone, training alone, training fed by the pipeline; and the verdict."""
    import keras_tuner as kt
    import tensorflow as tf

    from search_spaces import dtype_policy, hypermodel_class

    policy = dtype_policy("custom_cnn", "auto")
    hm = hypermodel_class("custom_cnn")(image_size=image_size, seed=0, precision=policy)
    model = hm.build(kt.HyperParameters())
    alone = pipeline_rate(ds, steps, batch_size)
    cached = tf.data.Dataset.from_tensors(next(iter(ds))).cache().repeat()
    train = fit_rate(model, cached, steps, batch_size)
    fed = fit_rate(model, ds, steps, batch_size)
    rows = [
        {"run": "pipeline alone (no training)", "images_per_s": alone},
        {"run": f"custom_cnn training alone (one cached batch, {policy})", "images_per_s": train},
        {"run": "custom_cnn training fed by the pipeline", "images_per_s": fed},
    ]
    verdict = {
        "fed_over_alone": fed / train,
        "pipeline_over_training": alone / train,
        "pipeline_is_bottleneck": fed < BOTTLENECK * train,
        "policy": policy,
        "steps": steps,
    }
    return rows, verdict


def train_records(data_dir: Path, limit: int) -> tuple[list[Path], dict[Path, int]]:
    """The training images (every k-th when ``limit``, so both classes stay in)."""
    records = [r for r in scan(data_dir) if r.source_split == "train"]
    if limit and limit < len(records):
        records = records[:: len(records) // limit][:limit]
    return [r.path for r in records], {r.path: r.label for r in records}


def run(
    data_dir: Path,
    image_size: int,
    out_dir: Path = RESULTS,
    batches: int = 150,
    steps: int = 40,
    limit: int = 0,
    batch_size: int = 32,
) -> tuple[Path, Path]:
    """Both benchmarks; writes pipeline.{json,md} and pipeline_demand.{json,md}."""
    load_start = load_average()
    paths, labels = train_records(data_dir, limit)
    cfg = PreprocessConfig(image_size=image_size)
    tmp = Path(tempfile.mkdtemp(prefix="pneumoscope-bench-"))
    try:
        cold = build_cache(paths, cfg, tmp, workers=2, progress=False)
        warm = build_cache(paths, cfg, tmp, workers=2, progress=False)
        y = np.array([labels[p] for p in cold.paths])
        ds = train_dataset(cold.images, y, batch_size, seed=0, augment=AugmentConfig())
        rate = pipeline_rate(ds, batches, batch_size)
        timed = batches * batch_size
        stages = _stage_rows(len(paths), image_size, cold.seconds, warm.seconds, rate, timed)
        js = write("pipeline", stages, {"image_size": image_size}, out_dir, load_start)[0]
        load_start = load_average()
        rows, verdict = demand(ds, image_size, steps, batch_size)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    extra = {"image_size": image_size, "images": len(paths), **verdict}
    js2 = write("pipeline_demand", rows, extra, out_dir, load_start, [[verdict]])[0]
    return js, js2


def _stage_rows(n: int, size: int, cold: float, warm: float, rate: float, timed: int) -> list[dict]:
    return [
        {
            "stage": f"cache build ({n} images, {size}px, 2 threads)",
            "seconds": cold,
            "images_per_s": n / cold,
        },
        {"stage": "cache reuse (second run)", "seconds": warm, "images_per_s": n / max(warm, 1e-9)},
        {
            "stage": "train pipeline from cache (oversampling + augmentation)",
            "seconds": timed / rate,
            "images_per_s": rate,
        },
    ]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR)
    p.add_argument("--image-size", type=int, default=128)
    p.add_argument("--batches", type=int, default=150, help="timed batches, pipeline alone")
    p.add_argument("--steps", type=int, default=40, help="timed training steps per run")
    p.add_argument("--limit", type=int, default=0, help="use N training images (0: all)")
    p.add_argument("--out-dir", type=Path, default=RESULTS)
    a = p.parse_args()
    run(a.data_dir, a.image_size, a.out_dir, a.batches, a.steps, a.limit)


if __name__ == "__main__":
    main()
