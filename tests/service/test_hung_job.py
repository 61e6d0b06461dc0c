"""A job that hangs is failed after JOB_TIMEOUT_SECONDS and its stuck worker process exits,
on the real stacks (the job hangs in the test-only TASK_DELAY_SECONDS sleep)."""

from __future__ import annotations

import signal

import pytest

from tests.service_support import Stack, stop_process, wait_for

pytestmark = pytest.mark.services


def test_hung_job_is_failed_and_its_worker_exits(stack: Stack, sample_jpeg: bytes) -> None:
    assert stack.worker is not None
    main_worker = stack.worker
    main_worker.send_signal(signal.SIGSTOP)  # only the hanging worker may take the job
    hanging = stack._spawn("worker", {"TASK_DELAY_SECONDS": "600", "JOB_TIMEOUT_SECONDS": "4"})
    try:
        r = stack.upload(sample_jpeg)
        assert r.status_code == 202, r.text
        body = stack.wait_status(r.json()["id"], ("done", "rejected", "failed"), timeout=300)
        assert body["status"] == "failed" and "JOB_TIMEOUT_SECONDS" in body["error"], body
        wait_for(lambda: hanging.poll() is not None, 30, "the hung worker to exit")
        assert hanging.returncode == 70  # exited on purpose, for its supervisor to restart it
    finally:
        stop_process(hanging)
        main_worker.send_signal(signal.SIGCONT)
