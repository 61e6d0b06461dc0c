"""Load under failure: N uploads at concurrency C against PostgreSQL + Redis with 2 workers,
one worker SIGKILLed every K seconds and restarted.

    python -m benchmarks.load_bench [--uploads 1000] [--concurrency 50] [--kill-every 20]
                                    [--model PATH]

Each client thread uploads a distinct image (so a refused upload can be looked
up by its SHA-256) and waits for its job. Afterwards every upload must be
accounted for: done, rejected (by the gate), or refused with 503/429 *and*
absent from the uploads table and from storage. Records p50/p95 end-to-end
latency (client: upload sent -> final status seen), the peak RSS of the API
and of any worker process, and the machine's load. Writes
``benchmarks/results/load.{json,md}``; the README's ``bench:load`` block is
filled from it (``python -m benchmarks.readme``).
"""

from __future__ import annotations

import argparse
import shutil
import signal
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks.common import load_average, sample_image, write  # noqa: E402
from benchmarks.service_bench import pct  # noqa: E402
from tests.service_support import (  # noqa: E402
    Postgres,
    Redis,
    Stack,
    make_tiny_winner,
    stop_process,
    wait_for,
)

FINAL = ("done", "rejected", "failed")
# Recovery timings for a run with kills: a killed worker's job is re-sent 10-12 s later.
LOAD_ENV = {
    "LEASE_SECONDS": "10",
    "SWEEP_INTERVAL_SECONDS": "2",
    "REQUEUE_AFTER_SECONDS": "120",
    "WORKER_TTL_SECONDS": "30",
    "BROKER_VISIBILITY_TIMEOUT": "60",
    "METRICS_CACHE_SECONDS": "30",
}


def images(source: Path, n: int) -> list[bytes]:
    """n distinct JPEGs of one real X-ray: a few pixels of a corner changed per copy."""
    import cv2

    base = cv2.imread(str(source), cv2.IMREAD_GRAYSCALE)
    out = []
    for i in range(n):
        img = base.copy()
        img[0, :16] = [(i >> b) & 1 and 255 for b in range(16)]
        out.append(cv2.imencode(".jpeg", img, [cv2.IMWRITE_JPEG_QUALITY, 92])[1].tobytes())
    return out


class Workers:
    """Two worker processes; ``kill_one`` SIGKILLs them in turn and starts a replacement."""

    def __init__(self, stack: Stack) -> None:
        self.stack = stack
        self.procs = [stack._spawn("worker"), stack._spawn("worker")]
        self.lock = threading.Lock()
        self.kills = 0

    def kill_one(self) -> None:
        with self.lock:
            i = self.kills % 2
            self.procs[i].send_signal(signal.SIGKILL)
            self.procs[i].wait(timeout=10)
            self.procs[i] = self.stack._spawn("worker")
            self.kills += 1

    def pids(self) -> list[int]:
        with self.lock:
            return [p.pid for p in self.procs]

    def stop(self) -> None:
        for p in self.procs:
            stop_process(p)


class Sampler(threading.Thread):
    """Peak RSS of the API and of any worker process, sampled from /proc every 0.5 s."""

    def __init__(self, api_pid: int, workers: Workers) -> None:
        super().__init__(daemon=True)
        self.api_pid, self.workers = api_pid, workers
        self.peak = {"api": 0, "worker": 0}
        self.stop_event = threading.Event()

    def run(self) -> None:
        import psutil

        while not self.stop_event.wait(0.5):
            for role, pids in (("api", [self.api_pid]), ("worker", self.workers.pids())):
                for pid in pids:
                    try:
                        rss = psutil.Process(pid).memory_info().rss
                    except psutil.Error:
                        continue
                    self.peak[role] = max(self.peak[role], rss)


def one_client(base: str, data: bytes, timeout: float) -> dict[str, Any]:
    """Upload, then poll until the job is final; what the client saw and when."""
    import httpx

    t0 = time.perf_counter()
    with httpx.Client(base_url=base, timeout=60) as c:
        try:
            r = c.post("/v1/predictions", files={"file": ("x.jpeg", data, "image/jpeg")})
        except httpx.HTTPError as exc:
            return {"code": f"error:{type(exc).__name__}"}
        out: dict[str, Any] = {"code": str(r.status_code)}
        if r.status_code != 202:
            out["retry_after"] = r.headers.get("Retry-After")
            return out
        pid, end = r.json()["id"], time.monotonic() + timeout
        while time.monotonic() < end:
            status = c.get(f"/v1/predictions/{pid}").json()["status"]
            if status in FINAL:
                return out | {"status": status, "seconds": time.perf_counter() - t0}
            time.sleep(0.25)
    return out | {"status": "lost"}


def audit_refused(stack: Stack, db_url: str, blobs: list[bytes], results: list[dict]) -> int:
    """How many refused uploads left a row or a file behind (must be 0)."""
    import hashlib

    from sqlalchemy import select

    from service.db import Database
    from service.models import Upload

    db = Database(db_url)
    with db.session() as s:
        stored = set(s.execute(select(Upload.sha256)).scalars())
    db.dispose()
    storage = Path(stack.env["DATA_DIR"]) / "storage"
    leaks = 0
    for data, res in zip(blobs, results, strict=True):
        if res["code"] in ("503", "429"):
            sha = hashlib.sha256(data).hexdigest()
            leaks += sha in stored or (storage / sha[:2] / sha).exists()
    return leaks


def drive(stack: Stack, workers: Workers, blobs: list[bytes], args: argparse.Namespace) -> dict:
    """The clients, the killer and the RSS sampler together; returns the per-upload results."""
    sampler = Sampler(stack.api.pid, workers)  # type: ignore[union-attr]
    sampler.start()
    done = threading.Event()

    def killer() -> None:
        while not done.wait(args.kill_every):
            workers.kill_one()

    threading.Thread(target=killer, daemon=True).start()
    t0 = time.perf_counter()
    with ThreadPoolExecutor(args.concurrency) as pool:
        results = list(pool.map(lambda b: one_client(stack.base, b, args.job_timeout), blobs))
    wall = time.perf_counter() - t0
    done.set()
    sampler.stop_event.set()
    return {"results": results, "wall": wall, "peak": sampler.peak, "kills": workers.kills}


def summarise(run: dict[str, Any], leaks: int, n: int) -> dict[str, Any]:
    res = run["results"]
    codes: dict[str, int] = {}
    finals: dict[str, int] = {}
    for r in res:
        codes[r["code"]] = codes.get(r["code"], 0) + 1
        if "status" in r:
            finals[r["status"]] = finals.get(r["status"], 0) + 1
    refused = codes.get("503", 0) + codes.get("429", 0)
    lat = [r["seconds"] for r in res if "seconds" in r]
    accounted = finals.get("done", 0) + finals.get("rejected", 0) + refused - leaks
    return {
        "uploads": n,
        "http_codes": codes,
        "final_status": finals,
        "refused_with_leftovers": leaks,
        "accounted_for": accounted,
        "unaccounted": n - accounted,
        "wall_s": round(run["wall"], 1),
        "e2e_p50_s": round(pct(lat, 0.5), 2),
        "e2e_p95_s": round(pct(lat, 0.95), 2),
        "workers_killed": run["kills"],
        "peak_rss_api_mb": round(run["peak"]["api"] / 2**20),
        "peak_rss_worker_mb": round(run["peak"]["worker"] / 2**20),
    }


def run(args: argparse.Namespace) -> tuple[dict[str, Any], list[float]]:
    work = Path(tempfile.mkdtemp(prefix="pneumoscope-load-"))
    redis, pg = Redis(work), Postgres()
    stack: Stack | None = None
    workers: Workers | None = None
    try:
        model = args.model or make_tiny_winner(work / "tiny_study")
        blobs = images(args.image, args.uploads)
        redis.start()
        pg.start()
        env = LOAD_ENV | {"MODEL_PATH": str(model), "DATABASE_URL": pg.url,
                          "BROKER_URL": redis.url, "MAX_QUEUE_DEPTH": str(args.max_queue_depth),
                          "RATE_LIMIT": args.rate_limit}  # fmt: skip
        stack = Stack(work, env)
        stack.migrate()
        stack.start_api()
        workers = Workers(stack)
        wait_for(lambda: stack.client.get("/readyz").json().get("workers") == 2, 600, "2 workers")
        load_start = load_average()
        out = drive(stack, workers, blobs, args)
        row = summarise(out, audit_refused(stack, pg.url, blobs, out["results"]), args.uploads)
        row |= {"concurrency": args.concurrency, "kill_every_s": args.kill_every,
                "max_queue_depth": args.max_queue_depth, "rate_limit": args.rate_limit,
                "model": str(model) if args.model else "tiny untrained 64x64 CNN"}  # fmt: skip
        return row, load_start
    finally:
        if workers is not None:
            workers.stop()
        if stack is not None:
            stack.stop()
        redis.stop()
        pg.stop()
        shutil.rmtree(work, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--uploads", type=int, default=1000)
    p.add_argument("--concurrency", type=int, default=50)
    p.add_argument("--kill-every", type=float, default=20.0, help="seconds between SIGKILLs")
    p.add_argument("--max-queue-depth", type=int, default=30)
    p.add_argument("--rate-limit", default="480/minute", help="per client (all share one IP)")
    p.add_argument("--job-timeout", type=float, default=900.0, help="client wait per job, s")
    p.add_argument("--model", type=Path, default=None, help="default: a tiny untrained CNN")
    p.add_argument("--image", type=Path, default=None, help="default: a full-resolution sample")
    args = p.parse_args(argv)
    args.image = args.image or sample_image()
    row, load_start = run(args)
    table = [{"measure": k.replace("_", " "), "value": str(v)} for k, v in row.items()]
    write("load", table, extra={"result": row}, load_start=load_start)
    return 0 if row["unaccounted"] == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
