"""Service benchmark: model-only vs end-to-end latency, throughput, and a 200-upload load run.

    python benchmarks/service_bench.py [--backend sqlite|pg_redis] [--model PATH] [--gate DIR]

Runs real processes on loopback only (``python -m service api|worker``),
writes ``benchmarks/results/service_bench.{json,md}``, and stops everything
it started. Without --model it uses MODEL_PATH, else the newest
results/*/winner, else a tiny untrained 64x64 CNN (say so when quoting). The workers
need a fitted input gate: --gate, else the gate/ folder beside the winner
(``python run_study.py gate fit``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks.common import sample_image  # noqa: E402
from tests.service_support import (  # noqa: E402
    Postgres,
    Redis,
    Stack,
    make_tiny_winner,
    stop_process,
    wait_for,
)

OUT = REPO / "benchmarks" / "results"
# Production-like timings (the test defaults re-send jobs after 8 s, which a backlog exceeds).
BENCH_ENV = {
    "LEASE_SECONDS": "60",
    "SWEEP_INTERVAL_SECONDS": "15",
    "REQUEUE_AFTER_SECONDS": "300",
    "WORKER_TTL_SECONDS": "90",
}
FINAL = ("done", "rejected", "failed")


def pct(xs: list[float], q: float) -> float:
    s = sorted(xs)
    if not s:
        return float("nan")
    k = (len(s) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def summary(xs: list[float]) -> dict[str, float]:
    return {
        "n": len(xs),
        "p50_ms": round(pct(xs, 0.5) * 1000, 1),
        "p95_ms": round(pct(xs, 0.95) * 1000, 1),
        "mean_ms": round(statistics.fmean(xs) * 1000, 1) if xs else float("nan"),
    }


def model_only(model: Path, data: bytes, n: int) -> dict[str, Any]:
    """In-process: Winner.predict_bytes (decode+preprocess+predict), and with Grad-CAM."""
    from service.inference import ModelRuntime
    from study.data.preprocess import decode

    rt = ModelRuntime(model)
    rt.warm_up()
    pred, full = [], []
    for _ in range(n):
        t = time.perf_counter()
        rt.predict_only(data)
        pred.append(time.perf_counter() - t)
    pixels = decode(data).pixels
    for _ in range(n):
        t = time.perf_counter()
        rt.run(data, pixels)
        full.append(time.perf_counter() - t)
    params = int(rt.keras.count_params())
    return {"predict": summary(pred), "predict_and_heatmap": summary(full), "params": params}


def wait_done(st: Stack, pid: str, timeout: float = 600) -> dict[str, Any]:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        b = st.client.get(f"/v1/predictions/{pid}").json()
        if b["status"] in FINAL:
            return b
        time.sleep(0.01)
    raise TimeoutError(pid)


def server_latency(b: dict[str, Any]) -> float:
    start = datetime.fromisoformat(b["created_at"].replace("Z", "+00:00"))
    end = datetime.fromisoformat(b["finished_at"].replace("Z", "+00:00"))
    return (end - start).total_seconds()


def sequential(st: Stack, data: bytes, n: int) -> dict[str, Any]:
    """One upload at a time: client-observed upload->done, and server created->finished."""
    client, server = [], []
    for _ in range(n):
        t = time.perf_counter()
        r = st.upload(data)
        b = wait_done(st, r.json()["id"])
        client.append(time.perf_counter() - t)
        server.append(server_latency(b))
    return {"client": summary(client), "server": summary(server)}


def burst(st: Stack, data: bytes, n: int, concurrency: int) -> dict[str, Any]:
    """n uploads from `concurrency` threads; every one must be accounted for."""
    import httpx

    def one(_: int) -> tuple[int, str | None]:
        with httpx.Client(base_url=st.base, timeout=60) as c:
            r = c.post("/v1/predictions", files={"file": ("x.jpeg", data, "image/jpeg")})
            return r.status_code, (r.json().get("id") if r.status_code == 202 else None)

    t0 = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        answers = list(pool.map(one, range(n)))
    t_sent = time.perf_counter() - t0
    codes: dict[str, int] = {}
    for code, _ in answers:
        codes[str(code)] = codes.get(str(code), 0) + 1
    ids = [i for _, i in answers if i]
    finals: dict[str, int] = {}
    lat = []
    for pid in ids:
        b = wait_done(st, pid)
        finals[b["status"]] = finals.get(b["status"], 0) + 1
        lat.append(server_latency(b))
    wall = time.perf_counter() - t0
    return {
        "uploads": n,
        "concurrency": concurrency,
        "http_codes": codes,
        "final_status": finals,
        "accounted_for": sum(finals.values()) + sum(v for k, v in codes.items() if k != "202"),
        "lost": n - (sum(finals.values()) + sum(v for k, v in codes.items() if k != "202")),
        "send_seconds": round(t_sent, 2),
        "wall_seconds": round(wall, 2),
        "throughput_per_s": round(len(ids) / wall, 2),
        "server_latency": summary(lat),
    }


def stack_db(st: Stack) -> str:
    return f"sqlite:///{Path(st.env['DATA_DIR']) / 'service.db'}"


def breakdown(db_url: str) -> dict[str, float]:
    """Where a job's time goes (p50 over finished jobs so far), from the predictions table."""
    from sqlalchemy import select

    from service.db import Database
    from service.models import Prediction

    db = Database(db_url)
    with db.session() as s:
        rows = (
            s.execute(
                select(Prediction)
                .where(Prediction.status == "done")
                .order_by(Prediction.created_at)
            )
            .scalars()
            .all()
        )
    db.dispose()
    rows = rows[3:]  # skip the warm-up jobs
    med = lambda xs: round(statistics.median(xs), 1) if xs else float("nan")  # noqa: E731
    return {
        "queue_wait": med([(p.started_at - p.created_at).total_seconds() * 1000 for p in rows]),
        "gate": med([p.gate_ms for p in rows if p.gate_ms is not None]),
        "preprocess_predict": med([p.inference_ms for p in rows if p.inference_ms is not None]),
        "heatmap": med([p.heatmap_ms for p in rows if p.heatmap_ms is not None]),
        "worker_total": med([p.total_ms for p in rows if p.total_ms is not None]),
    }


def _resolve_model(args: argparse.Namespace, work: Path) -> tuple[Path, bool]:
    """The winner to serve (flag, $MODEL_PATH, newest study) or a tiny untrained one."""
    model = args.model or (Path(os.environ["MODEL_PATH"]) if os.environ.get("MODEL_PATH") else None)
    if model is None:
        from study.select.model_io import newest_winner

        model = newest_winner(REPO / "results")
    if model is None:
        return make_tiny_winner(work / "tiny_study"), True
    return model, False


def _header(args: argparse.Namespace, model: Path, tiny: bool, data: bytes) -> dict[str, Any]:
    from study.data.preprocess import decode

    return {
        "when": datetime.now().isoformat(timespec="seconds"),
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "load_avg_at_start": os.getloadavg(),
        },  # fmt: skip
        "backend": args.backend,
        "model": {"path": model.name if tiny else str(model), "tiny_untrained": tiny},
        "image": {
            "name": args.image.name,
            "bytes": len(data),
            "shape": list(decode(data).pixels.shape),
        },
    }


def _measure_stack(
    stack: Stack,
    env: dict[str, str],
    data: bytes,
    args: argparse.Namespace,
    extra_workers: list[Any],
) -> dict[str, Any]:
    """End-to-end latency with one worker, then bursts with one and two workers."""
    res: dict[str, Any] = {}
    for _ in range(3):  # warm the path (first SQL, broker queue creation)
        wait_done(stack, stack.upload(data).json()["id"])
    res["end_to_end_1_worker"] = sequential(stack, data, args.n)
    res["worker_breakdown_ms"] = breakdown(env.get("DATABASE_URL") or stack_db(stack))
    res["burst_1_worker"] = burst(stack, data, args.burst, 10)
    extra_workers.append(stack._spawn("worker"))
    wait_for(lambda: stack.client.get("/readyz").json().get("workers") == 2, 300, "2 workers")
    res["burst_2_workers"] = burst(stack, data, args.burst, 10)
    res["load_200_c20_2_workers"] = burst(stack, data, 200, 20)
    return res


def _ratios(res: dict[str, Any]) -> None:
    m = res["model_only"]["predict"]["p50_ms"]
    mh = res["model_only"]["predict_and_heatmap"]["p50_ms"]
    e = res["end_to_end_1_worker"]["client"]["p50_ms"]
    res["ratio_e2e_over_model_only_p50"] = round(e / m, 2)
    res["ratio_e2e_over_model_and_heatmap_p50"] = round(e / mh, 2)
    res["throughput_speedup_2_over_1_worker"] = round(
        res["burst_2_workers"]["throughput_per_s"] / res["burst_1_worker"]["throughput_per_s"], 2
    )


def run(args: argparse.Namespace) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="pneumoscope-bench-"))
    redis = pg = None
    stack: Stack | None = None
    extra_workers: list[Any] = []
    try:
        model, tiny = _resolve_model(args, work)
        data = args.image.read_bytes()
        res = _header(args, model, tiny, data)
        res["model_only"] = model_only(model, data, args.n)
        res["model"]["params"] = res["model_only"].pop("params")
        env = {**BENCH_ENV, "MODEL_PATH": str(model)}
        if args.gate is not None:  # else the gate/ folder beside the winner
            env["GATE_DIR"] = str(args.gate.resolve())
        if args.backend == "pg_redis":
            redis, pg = Redis(work), Postgres()
            redis.start()
            pg.start()
            env |= {"DATABASE_URL": pg.url, "BROKER_URL": redis.url}
        stack = Stack(work, env)
        stack.migrate()
        stack.start_api()
        stack.start_worker()
        res |= _measure_stack(stack, env, data, args, extra_workers)
        _ratios(res)
        res["machine"]["load_avg_at_end"] = os.getloadavg()
        return res
    finally:
        for w in extra_workers:
            stop_process(w)
        if stack is not None:
            stack.stop()
        for server in (redis, pg):
            if server is not None:
                server.stop()
        shutil.rmtree(work, ignore_errors=True)


def markdown(r: dict[str, Any]) -> str:
    mo, e2e = r["model_only"], r["end_to_end_1_worker"]
    rows = [
        ("model only: preprocess + predict", mo["predict"]),
        ("model only: + Grad-CAM heatmap", mo["predict_and_heatmap"]),
        ("end to end, 1 worker (client: upload -> done seen)", e2e["client"]),
        ("end to end, 1 worker (server: created -> finished)", e2e["server"]),
    ]
    lines = [
        f"# Service benchmark ({r['when']}, backend {r['backend']})",
        "",
        f"Model: {r['model']['path']} ({r['model']['params']:,} params"
        + (", tiny untrained stand-in" if r["model"]["tiny_untrained"] else "")
        + f"); image {r['image']['name']} {r['image']['shape']} ({r['image']['bytes']:,} bytes);"
        f" {r['machine']['cpus']} CPUs, load average at start {r['machine']['load_avg_at_start']},"
        f" at end {r['machine'].get('load_avg_at_end')} (the machine is shared).",
        "",
        "| latency | n | p50 ms | p95 ms | mean ms |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    lines += [
        f"| {k} | {v['n']} | {v['p50_ms']} | {v['p95_ms']} | {v['mean_ms']} |" for k, v in rows
    ]
    bd = r["worker_breakdown_ms"]
    lines += [
        "",
        "Where a job's time goes (p50 ms, worker side): "
        + ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in bd.items())
        + ". The gate decodes the full-resolution image once and computes its features; the"
        " model input is made from those pixels by Winner.prepare_pixels (the shared"
        " preprocessing).",
    ]
    lines += [
        "",
        f"Ratio end-to-end / model-only (p50): {r['ratio_e2e_over_model_only_p50']}"
        f" (/ model+heatmap: {r['ratio_e2e_over_model_and_heatmap_p50']}).",
        "",
        "| run | uploads | concurrency | HTTP codes | final status | lost | wall s | jobs/s |"
        " server p50 / p95 ms |",
        "| --- | ---: | ---: | --- | --- | ---: | ---: | ---: | --- |",
    ]
    for name in ("burst_1_worker", "burst_2_workers", "load_200_c20_2_workers"):
        b = r[name]
        lines.append(
            f"| {name} | {b['uploads']} | {b['concurrency']} | {b['http_codes']} |"
            f" {b['final_status']} | {b['lost']} | {b['wall_seconds']} | {b['throughput_per_s']} |"
            f" {b['server_latency']['p50_ms']} / {b['server_latency']['p95_ms']} |"
        )
    lines += [
        "",
        f"Throughput 2 workers / 1 worker: {r['throughput_speedup_2_over_1_worker']}x",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--backend", choices=["sqlite", "pg_redis"], default="sqlite")
    p.add_argument("--model", type=Path, default=None)
    p.add_argument(
        "--gate", type=Path, default=None, help="fitted gate folder (default: beside the winner)"
    )
    p.add_argument("--image", type=Path, default=None, help="default: a full-resolution sample")
    p.add_argument("--n", type=int, default=30, help="sequential runs per latency figure")
    p.add_argument("--burst", type=int, default=40, help="uploads per throughput burst")
    args = p.parse_args(argv)
    args.image = args.image or sample_image()
    res = run(args)
    OUT.mkdir(parents=True, exist_ok=True)
    stem = "service_bench" if args.backend == "sqlite" else f"service_bench_{args.backend}"
    (OUT / f"{stem}.json").write_text(json.dumps(res, indent=1))
    (OUT / f"{stem}.md").write_text(markdown(res))
    print(markdown(res))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
