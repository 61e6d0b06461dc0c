"""What the input gate costs a worker: p50/p95 per job on a full-resolution JPEG.

Three timings of the worker's own steps, in one process, on the same image:

* model only: what a job costs without a gate (decode, preprocess, predict, Grad-CAM
  drawn over the decoded image, as the worker does);
* gate: the four layers (decode, hand-made features, the EfficientNet-Lite0 features);
* gate + model: a job as the worker runs it (the model reuses the gate's decoded pixels).

The model is ``--model``, else the newest ``results/*/winner``, else a stand-in with the
study's EfficientNet-Lite0 architecture at 224 px (random weights: the cost of a forward
pass and Grad-CAM does not depend on the weight values).

    python -m benchmarks.gate_bench --gate results/<study>/gate [--image FILE] [--repeats N]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import load_average, sample_image, write

REPO = Path(__file__).resolve().parents[1]


def stand_in_winner(study_dir: Path) -> Path:
    """EfficientNet-Lite0 (224 px, grey input repeated to RGB, sigmoid head), random init,
    exported like a real winner."""
    import keras

    from study.data.preprocess import PreprocessConfig
    from study.models.efficientnet_lite import build_efficientnet_lite, preprocessing_layer
    from study.select.model_io import export_winner

    keras.utils.set_random_seed(0)
    inp = keras.Input((224, 224, 1))
    x = keras.layers.Concatenate()([inp, inp, inp])
    x = preprocessing_layer(input_max=1.0)(x)
    backbone = build_efficientnet_lite("lite0", (224, 224, 3), include_top=False, pooling="avg")
    out = keras.layers.Dense(1, activation="sigmoid")(backbone(x))
    info = {
        "study": "stand-in-lite0",
        "version": "standin01",
        "threshold": 0.5,
        "class_names": ["NORMAL", "PNEUMONIA"],
        "preprocess": PreprocessConfig(image_size=224).to_dict(),
    }
    return export_winner(keras.Model(inp, out), info, study_dir)


def interleaved(fns: list[Callable[[], Any]], repeats: int, warm: int = 3) -> list[list[float]]:
    """Time each function ``repeats`` times, taking turns (a shared machine's load then
    drifts over all of them alike)."""
    for _ in range(warm):
        for fn in fns:
            fn()
    out: list[list[float]] = [[] for _ in fns]
    for _ in range(repeats):
        for k, fn in enumerate(fns):
            t0 = time.perf_counter()
            fn()
            out[k].append((time.perf_counter() - t0) * 1000.0)
    return out


def row(step: str, ms: list[float]) -> dict[str, Any]:
    q = np.percentile(ms, [50, 95])
    return {
        "step": step,
        "p50_ms": round(float(q[0]), 1),
        "p95_ms": round(float(q[1]), 1),
        "mean_ms": round(statistics.fmean(ms), 1),
        "runs": len(ms),
    }


def measure(model: Path, gate_dir: Path, data: bytes, repeats: int) -> list[dict[str, Any]]:
    from service.gate import default_model, run_gate
    from service.inference import ModelRuntime
    from service.settings import Settings
    from study.data.preprocess import decode

    settings = Settings(gate_dir=gate_dir)
    gate = default_model(settings)
    runtime = ModelRuntime(model)

    def job() -> None:
        r = run_gate(data, settings, gate)
        runtime.run(data, r.decoded.pixels if r.decoded is not None else None)

    steps = {
        "model only (decode, predict, Grad-CAM)": lambda: runtime.run(data, decode(data).pixels),
        "gate (4 layers)": lambda: run_gate(data, settings, gate),
        "gate + model (a worker's job)": job,
    }
    ms = interleaved(list(steps.values()), repeats)
    return [row(name, t) for name, t in zip(steps, ms, strict=True)]


def winner_label(model: Path) -> str:
    """``<study>/winner: <trial or members>, <size> px``, from the winner's winner.json."""
    from study.select.model_io import read_info

    info = read_info(Path(model))
    what = " + ".join(info.get("members") or []) or info.get("family")
    return f"{Path(model).resolve().parent.name}/winner: {what}, {info.get('image_size')} px"


def main(argv: list[str] | None = None) -> int:

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gate", type=Path, required=True, help="fitted gate folder")
    ap.add_argument("--model", type=Path, default=None, help="winner SavedModel dir")
    ap.add_argument("--image", type=Path, default=None)
    ap.add_argument("--repeats", type=int, default=40)
    a = ap.parse_args(argv)
    image = a.image or sample_image()
    load_start = load_average()
    with tempfile.TemporaryDirectory() as tmp:
        from study.select.model_io import newest_winner

        model = a.model or newest_winner(REPO / "results")
        label = winner_label(model) if model else "stand-in EfficientNet-Lite0 224 px, random"
        model = model or stand_in_winner(Path(tmp))
        data = image.read_bytes()
        rows = measure(model, a.gate, data, a.repeats)
    from study.data.preprocess import decode

    h, w = decode(data).pixels.shape[:2]
    base, gate, both = rows[0]["p50_ms"], rows[1]["p50_ms"], rows[2]["p50_ms"]
    extra = {
        "image": {"name": image.name, "width": w, "height": h, "bytes": len(data)},
        "model": label,
        "gate_overhead_p50": round(both / base - 1, 3),
        "gate_over_model_p50": round(gate / base, 3),
    }
    summary = [
        {
            "image": f"{image.name} ({w}x{h})",
            "model": extra["model"],
            "job with gate vs without (p50)": f"{extra['gate_overhead_p50']:+.0%}",
            "gate alone / model alone (p50)": f"{extra['gate_over_model_p50']:.0%}",
        }
    ]
    write("gate_latency", rows, extra, load_start=load_start, more_tables=[summary])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
