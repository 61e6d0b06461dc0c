"""Redis stopped: /readyz names the failed dependency, uploads get a clean 503, nothing is lost."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.service_support import Redis, Stack, wait_for

pytestmark = pytest.mark.services


def test_broker_down_is_503_and_no_job_is_lost(
    pg_redis_stack: Stack, redis_server: Redis, full_res_jpegs: list[Path]
) -> None:
    st = pg_redis_stack
    st.stop_worker()
    # A job sits in Redis (no worker) when Redis dies; Redis keeps no data across a restart.
    queued = st.upload(full_res_jpegs[0].read_bytes(), name="before-outage.jpeg").json()["id"]
    redis_server.stop()
    try:
        r = st.client.get("/readyz")
        assert r.status_code == 503
        assert r.json()["checks"]["broker"] != "ok" and r.json()["checks"]["database"] == "ok"
        before = st.client.get("/v1/uploads/stats", headers={"X-API-Key": st.env["API_KEY"]}).json()
        r = st.upload(full_res_jpegs[1].read_bytes(), name="during-outage.jpeg")
        assert r.status_code == 503, r.text
        assert r.json()["error"]["code"] == "broker_unavailable"
        assert "Traceback" not in r.text
        after = st.client.get("/v1/uploads/stats", headers={"X-API-Key": st.env["API_KEY"]}).json()
        assert after["total"] - before["total"] <= 1  # the stored file's upload row may stay
        assert st.client.get(f"/v1/predictions/{queued}").json()["status"] == "queued"
    finally:
        redis_server.start()  # same port, empty
    st.start_worker(wait=False)
    done = st.wait_status(queued, ("done", "failed", "rejected"), timeout=180)
    assert done["status"] == "done", done
    wait_for(lambda: st.client.get("/readyz").status_code == 200, 60, "/readyz back to 200")
    again = st.upload(full_res_jpegs[1].read_bytes(), name="after-outage.jpeg")
    assert again.status_code == 202
    assert st.wait_status(again.json()["id"], ("done", "failed", "rejected"))["status"] == "done"
