"""Which precision each family trains faster in: mixed bfloat16 or float32, per search point.

    python -m benchmarks.precision_bench [--image-size 128] [--steps 5] [--warmup 2]

For every family, a few real points of its search space (the hypermodel's own
``build(hp)`` with fixed hyperparameter values) are built in each precision and timed:
the median of ``--steps`` training steps at batch 32 after ``--warmup`` untimed ones, on
random data. Transfer families get random-init backbones (:mod:`benchmarks.random_weights`):
throughput does not depend on the weight values. A family's verdict is bf16 only when its
geometric-mean speed-up over the points is at least ``MIN_SPEEDUP`` (float32 is exact, so
a tie goes to it). ``--precision auto`` reads these verdicts from
``benchmarks/results/precision.json`` (:func:`search_spaces.measured_precision`).
"""

from __future__ import annotations

import argparse
import math
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.common import RESULTS, load_average, write
from search_spaces import DTYPE_POLICIES, FAMILY_NAMES

BATCH = 32
BF16, F32 = "mixed_bfloat16", "float32"
MIN_SPEEDUP = 1.05  # geometric-mean float32/bf16 step-time ratio needed to choose bf16
_SHARED = {"optimizer": "adam", "learning_rate": 1e-3, "dropout": 0.2}
_TRANSFER = {**_SHARED, "head_units": 128}
_CNN = {**_SHARED, "kernel_size": 3, "downsample": "max", "head": "gap"}


def _transfer_points(backbone: str) -> dict[str, dict[str, Any]]:
    """Frozen backbone, and fine-tuning the top 1 and 6 blocks (the search's extremes)."""
    tuned = {"fine_tune_lr_mult": 0.1, **_TRANSFER}
    return {
        f"{backbone} frozen": {**_TRANSFER, "fine_tune_blocks": 0},
        **{f"{backbone} fine-tune top {n}": {**tuned, "fine_tune_blocks": n} for n in (1, 6)},
    }


# family -> point name -> hyperparameter values (every value is in the family's space).
POINTS: dict[str, dict[str, dict[str, Any]]] = {
    "custom_cnn": {
        "small (s2d, 2x1 plain, f16)": {
            **_CNN,
            "stem": "space_to_depth4",
            "stages": 2,
            "blocks_per_stage": 1,
            "filters": 16,
            "block": "plain",
            "dense_units": 0,
        },
        "medium (conv5, 3x1 residual, f32)": {
            **_CNN,
            "stem": "conv5_s2_pool",
            "stages": 3,
            "blocks_per_stage": 1,
            "filters": 32,
            "block": "residual",
            "dense_units": 64,
        },
        "large (conv7, 4x2 residual, f48, k5)": {
            **_CNN,
            "stem": "conv7_s2_pool",
            "stages": 4,
            "blocks_per_stage": 2,
            "filters": 48,
            "block": "residual",
            "dense_units": 128,
            "kernel_size": 5,
        },
    },
    "resnet": _transfer_points("ResNet50V2"),
    "efficientnet": _transfer_points("Lite0"),
}


def point_hp(hypermodel: Any, values: dict[str, Any]) -> Any:
    """Hyperparameters set to ``values``, each checked against the family's declared space."""
    import keras_tuner as kt

    hp = kt.HyperParameters()
    hypermodel.declare(hp)
    space = {h.name: h for h in hp.space}
    for name, value in values.items():
        h = space.get(name)
        if h is None:
            raise ValueError(f"{hypermodel.family} has no hyperparameter {name!r}")
        lo, hi = getattr(h, "min_value", value), getattr(h, "max_value", value)
        choices = h.values if type(h).__name__ == "Choice" else [value]
        if value not in choices or not lo <= value <= hi:
            raise ValueError(f"{hypermodel.family}: {name}={value!r} is outside its space")
        hp.values[name] = value
    return hp


def time_point(
    family: str, values: dict, policy: str, size: int, steps: int, warmup: int, weights: Any
) -> dict:
    """Median seconds per training step of one search point in one precision."""
    import keras
    import numpy as np

    from search_spaces import hypermodel_class

    keras.backend.clear_session()
    hm = hypermodel_class(family)(image_size=size, seed=0, weights=weights, precision=policy)
    model = hm.build(point_hp(hm, values))
    rng = np.random.default_rng(0)
    x = rng.random((BATCH, size, size, 1), dtype=np.float32)
    y = rng.integers(0, 2, (BATCH, 1)).astype(np.float32)
    model.train_on_batch(x, y)  # traces the step
    for _ in range(warmup):
        model.train_on_batch(x, y)
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        model.train_on_batch(x, y)
        times.append(time.perf_counter() - t0)
    keras.mixed_precision.set_global_policy(F32)
    return {
        "params": model.count_params(),
        "trainable": sum(int(np.prod(w.shape)) for w in model.trainable_weights),
        "s_per_step": statistics.median(times),
    }


def verdict(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """A family's precision from its points' speed-ups (float32 s/step over bf16 s/step)."""
    speedups = [r["speedup_bf16"] for r in rows]
    geomean = math.exp(sum(math.log(s) for s in speedups) / len(speedups))
    return {
        "precision": BF16 if geomean >= MIN_SPEEDUP else F32,
        "geomean_speedup_bf16": geomean,
        "points_faster_in_bf16": sum(s > 1 for s in speedups),
        "points": len(speedups),
    }


def bench_family(
    family: str, size: int, steps: int, warmup: int, weights_dir: Path, points: int
) -> list[dict]:
    """One row per search point: s/step in each precision and the bf16 speed-up."""
    from benchmarks.random_weights import random_weights

    weights = random_weights(family, weights_dir, size)
    rows = []
    for name, values in list(POINTS[family].items())[:points]:
        t = {p: time_point(family, values, p, size, steps, warmup, weights) for p in (BF16, F32)}
        row = {
            "family": family,
            "point": name,
            "params": t[F32]["params"],
            "trainable": t[F32]["trainable"],
            "float32_s_per_step": t[F32]["s_per_step"],
            "bf16_s_per_step": t[BF16]["s_per_step"],
            "speedup_bf16": t[F32]["s_per_step"] / t[BF16]["s_per_step"],
        }
        print(row, flush=True)
        rows.append(row)
    return rows


def run(
    families: list[str],
    size: int,
    steps: int,
    warmup: int,
    out_dir: Path = RESULTS,
    points: int = 3,
) -> Path:
    """Benchmark ``families``; writes precision.{json,md} to ``out_dir``, returns the JSON."""
    load_start = load_average()
    rows: list[dict] = []
    verdicts: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="pneumoscope-random-weights-") as tmp:
        for fam in families:
            fam_rows = bench_family(fam, size, steps, warmup, Path(tmp), points)
            rows += fam_rows
            verdicts[fam] = verdict(fam_rows)
    assert set(DTYPE_POLICIES) == {BF16, F32}
    settings = {"image_size": size, "batch": BATCH, "steps": steps, "warmup": warmup}
    table = [{"family": f, **v} for f, v in verdicts.items()]
    js, _ = write(
        "precision",
        rows,
        {**settings, "min_speedup": MIN_SPEEDUP, "verdicts": verdicts},
        out_dir,
        load_start,
        [table],
    )
    return js


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--image-size", type=int, default=128)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--families", default=",".join(FAMILY_NAMES))
    p.add_argument("--points", type=int, default=3, help="first N points of each family")
    p.add_argument("--out-dir", type=Path, default=RESULTS)
    a = p.parse_args()
    run(a.families.split(","), a.image_size, a.steps, a.warmup, a.out_dir, a.points)


if __name__ == "__main__":
    main()
