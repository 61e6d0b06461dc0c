"""``python -m service`` (what ``make serve`` runs): API + one worker, SQLite only, no servers."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import httpx
import psutil
import pytest

from tests.service_support import REPO, clean_environ, free_port, stop_process, wait_for

pytestmark = pytest.mark.services


def test_embedded_mode_serves_and_stops_its_worker(
    tiny_winner: Path, sample_jpeg: bytes, artifacts_dir: Path
) -> None:

    work = Path(tempfile.mkdtemp(prefix="pneumoscope-embedded-"))
    port = free_port()
    env = {**clean_environ(), "DATA_DIR": str(work), "MODEL_PATH": str(tiny_winner),
           "PORT": str(port), "LOG_LEVEL": "warning", "PYTHONPATH": str(REPO)}  # fmt: skip
    log = open(artifacts_dir / "service-embedded.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen(
        [sys.executable, "-m", "service"],
        cwd=REPO,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    children: list[psutil.Process] = []
    stopped_by_parent = False
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as c:
            wait_for(lambda: c.get("/readyz").status_code == 200, 240, "embedded /readyz", 0.5)
            children = psutil.Process(proc.pid).children(recursive=True)
            assert children, "the embedded mode runs its worker as a child process"
            # A 503 is the API's documented "refused cleanly, try again" (e.g. the SQLite
            # broker busy on a loaded machine); a client retries it.
            r = wait_for(
                lambda: (
                    (
                        resp := c.post("/v1/predictions", files={"file": ("x.jpeg", sample_jpeg)})
                    ).status_code
                    != 503
                    and resp
                ),
                60,
                "an upload that is not refused with 503",
                1.0,
            )
            assert r.status_code == 202, r.text
            pid = r.json()["id"]
            done = wait_for(
                lambda: (
                    (b := c.get(f"/v1/predictions/{pid}").json())["status"] != "queued"
                    and b["status"] != "running"
                    and b
                ),
                180,
                "embedded job",
            )
            assert done["status"] == "done", done
        assert (work / "service.db").is_file() and (work / "broker.db").is_file()
    finally:
        stop_process(proc, timeout=40)
        log.close()
        alive = [ch for ch in children if ch.is_running() and ch.status() != "zombie"]
        stopped_by_parent = not alive
        for ch in alive:  # only the worker this test started; never left running
            ch.kill()
        shutil.rmtree(work, ignore_errors=True)
    assert proc.returncode is not None
    assert stopped_by_parent, "the worker must stop when the embedded API stops"


def _worker_check(c: httpx.Client) -> tuple[int, str]:
    r = c.get("/readyz")
    return r.status_code, r.json()["checks"].get("worker", "")


def test_embedded_worker_killed_comes_back_and_finishes_the_queue(
    tiny_winner: Path, full_res_jpegs: list[Path], artifacts_dir: Path
) -> None:
    """SIGKILL the embedded worker: /readyz says it is down, the supervisor starts a new one,
    and every queued job (the killed one's included) finishes."""
    work = Path(tempfile.mkdtemp(prefix="pneumoscope-embedded-kill-"))
    port = free_port()
    env = {**clean_environ(), "DATA_DIR": str(work), "MODEL_PATH": str(tiny_winner),
           "PORT": str(port), "LOG_LEVEL": "warning", "PYTHONPATH": str(REPO),
           "TASK_DELAY_SECONDS": "2", "LEASE_SECONDS": "3", "SWEEP_INTERVAL_SECONDS": "1",
           "REQUEUE_AFTER_SECONDS": "5", "WORKER_TTL_SECONDS": "8"}  # fmt: skip
    log = open(artifacts_dir / "service-embedded-kill.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen([sys.executable, "-m", "service"], cwd=REPO, env=env, stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
    seen: list[psutil.Process] = []
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as c:
            wait_for(lambda: c.get("/readyz").status_code == 200, 240, "embedded /readyz", 0.5)
            assert _worker_check(c) == (200, "ok")
            first = psutil.Process(proc.pid).children()[0]
            ids = []
            for path in full_res_jpegs[:3]:
                r = c.post("/v1/predictions", files={"file": (path.name, path.read_bytes())})
                assert r.status_code == 202, r.text
                ids.append(r.json()["id"])
            wait_for(lambda: c.get(f"/v1/predictions/{ids[0]}").json()["status"] == "running",
                     60, "the first job running")  # fmt: skip
            first.kill()  # SIGKILL, mid-job
            status, why = wait_for(lambda: (s := _worker_check(c))[0] == 503 and s, 10,
                                   "/readyz reporting the worker down")  # fmt: skip
            seen.append(first)
            assert "down" in why or "starting" in why, why
            second = wait_for(
                lambda: [ch for ch in psutil.Process(proc.pid).children() if ch.pid != first.pid],
                30, "a new worker process",
            )[0]  # fmt: skip
            seen.append(second)
            wait_for(lambda: c.get("/readyz").status_code == 200, 240, "ready again", 0.5)
            for pid in ids:
                done = wait_for(
                    lambda pid=pid: (b := c.get(f"/v1/predictions/{pid}").json())["status"]
                    not in ("queued", "running") and b,
                    180, f"job {pid}",
                )  # fmt: skip
                assert done["status"] in ("done", "rejected"), done
            assert second.is_running()
    finally:
        stop_process(proc, timeout=40)
        log.close()
        for ch in seen:  # only the workers this test saw; stopped with their parent normally
            if ch.is_running() and ch.status() != psutil.STATUS_ZOMBIE:
                ch.kill()
        shutil.rmtree(work, ignore_errors=True)
