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
