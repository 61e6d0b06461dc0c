"""Training throughput per family, and achieved GFLOP/s against a matmul ceiling.

    python -m benchmarks.training_bench [--image-size 128] [--steps 8]

Each family is built with its default hyperparameters (the first point of its
search space), trained for a few steps on random data at batch 32, in mixed
bfloat16 and in float32; transfer families from random-init backbones
(:mod:`benchmarks.random_weights`: the cost of a step does not depend on the weights).
FLOPs per training step are counted by TensorFlow's profiler on the graph of one step
(forward, loss and the gradients of the trainable weights, so a frozen backbone costs its
forward pass only). The ceiling is a large matmul in the same dtype, timed in the same
run, so the ratio says how much of the CPU the model uses.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import keras
import keras_tuner as kt
import numpy as np
import tensorflow as tf

from benchmarks.common import RESULTS, load_average, write
from benchmarks.random_weights import random_weights
from search_spaces import FAMILY_NAMES, hypermodel_class


def matmul_gflops(dtype: tf.DType, n: int = 2048, reps: int = 6) -> float:
    a = tf.random.normal([n, n], dtype=tf.float32)
    a, b = tf.cast(a, dtype), tf.cast(tf.transpose(a), dtype)
    f = tf.function(lambda: tf.matmul(a, b))
    f()
    t0 = time.perf_counter()
    for _ in range(reps):
        f().numpy()
    return 2 * n**3 * reps / (time.perf_counter() - t0) / 1e9


def step_flops(model: keras.Model, size: int, batch: int) -> float:
    from tensorflow.python.framework.convert_to_constants import (
        convert_variables_to_constants_v2,
    )
    from tensorflow.python.profiler.model_analyzer import profile
    from tensorflow.python.profiler.option_builder import ProfileOptionBuilder

    loss_fn = keras.losses.BinaryCrossentropy()

    @tf.function
    def step(x, y):
        with tf.GradientTape() as tape:
            loss = loss_fn(y, model(x, training=False))  # no BN updates: graph can be frozen
        return tape.gradient(loss, model.trainable_variables)

    spec = (tf.TensorSpec([batch, size, size, 1], tf.float32), tf.TensorSpec([batch, 1]))
    frozen = convert_variables_to_constants_v2(step.get_concrete_function(*spec))
    opts = ProfileOptionBuilder(ProfileOptionBuilder.float_operation()).with_empty_output().build()
    return float(profile(frozen.graph, options=opts).total_float_ops)


def bench_family(family: str, size: int, steps: int, policy: str, weights_dir: Path) -> dict:
    weights = random_weights(family, weights_dir, size)
    keras.backend.clear_session()
    hypermodel = hypermodel_class(family)(
        image_size=size, seed=0, weights=weights, precision=policy
    )
    model = hypermodel.build(kt.HyperParameters())
    x = np.random.rand(32, size, size, 1).astype(np.float32)
    y = np.random.randint(0, 2, (32, 1)).astype(np.float32)
    model.train_on_batch(x, y)  # trace
    model.train_on_batch(x, y)
    t0 = time.perf_counter()
    for _ in range(steps):
        model.train_on_batch(x, y)
    step = (time.perf_counter() - t0) / steps
    flops = step_flops(model, size, 32)
    trainable = sum(int(np.prod(w.shape)) for w in model.trainable_weights)
    return {
        "family": family,
        "policy": policy,
        "image_size": size,
        "params": model.count_params(),
        "trainable": trainable,
        "step_s": step,
        "images_per_s": 32 / step,
        "gflop_per_step": flops / 1e9,
        "achieved_gflops": flops / step / 1e9,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--image-size", type=int, default=128)
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--families", default=",".join(FAMILY_NAMES))
    p.add_argument("--out-dir", type=Path, default=RESULTS)
    a = p.parse_args()
    load_start = load_average()
    ceilings = {"mixed_bfloat16": matmul_gflops(tf.bfloat16), "float32": matmul_gflops(tf.float32)}
    rows = []
    with tempfile.TemporaryDirectory(prefix="pneumoscope-random-weights-") as tmp:
        for fam in a.families.split(","):
            for policy in ("mixed_bfloat16", "float32"):
                r = bench_family(fam, a.image_size, a.steps, policy, Path(tmp))
                r["matmul_ceiling_gflops"] = ceilings[policy]
                r["ratio_to_ceiling"] = r["achieved_gflops"] / ceilings[policy]
                rows.append(r)
                print(r, flush=True)
    write("training", rows, {"matmul_ceiling_gflops": ceilings}, a.out_dir, load_start)


if __name__ == "__main__":
    main()
