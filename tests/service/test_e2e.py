"""End to end on real processes, over both backends (SQLite embedded; PostgreSQL + Redis)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.service_support import API_KEY, Stack

pytestmark = pytest.mark.services
KEY = {"X-API-Key": API_KEY}


def test_full_resolution_upload_to_done_with_heatmap(stack: Stack, sample_jpeg: bytes) -> None:
    # Lying name and content type: the bytes decide.
    r = stack.upload(sample_jpeg, name="scan.dcm", ctype="application/pdf")
    assert r.status_code == 202, r.text
    body = r.json()
    assert body["status"] == "queued" and body["status_url"] == f"/v1/predictions/{body['id']}"
    done = stack.wait_status(body["id"], ("done", "failed", "rejected"))
    assert done["status"] == "done", done
    res = done["result"]
    assert 0.0 <= res["probability_pneumonia"] <= 1.0
    assert res["label"] == ("PNEUMONIA" if res["probability_pneumonia"] >= 0.5 else "NORMAL")
    assert res["threshold"] == 0.5
    assert res["model"] == {"name": "tiny-test", "version": "tiny0001"}
    assert done["finished_at"] and done["rejection"] is None
    png = stack.client.get(res["heatmap_url"])
    assert png.status_code == 200 and png.headers["content-type"] == "image/png"
    assert png.content[:8] == b"\x89PNG\r\n\x1a\n"
    listing = stack.client.get("/v1/uploads", headers=KEY).json()
    mine = [u for u in listing["items"] if u["id"] == done["upload_id"]]
    assert mine[0]["content_type"] == "image/jpeg"  # sniffed from the bytes, not the name
    assert mine[0]["original_name"] and "/" not in mine[0]["original_name"]
    assert mine[0]["width"] and mine[0]["height"]  # the gate's safe metadata reached the upload
    metrics = stack.client.get("/metrics").text
    assert f'pneumoscope_predictions{{label="{res["label"]}",status="done"}}' in metrics
    assert "pneumoscope_http_request_seconds_bucket" in metrics


def test_duplicate_upload_reuses_upload_and_creates_new_prediction(
    stack: Stack, full_res_jpegs: list[Path]
) -> None:
    data = full_res_jpegs[1].read_bytes()
    first, second = stack.upload(data).json(), stack.upload(data, name="again.jpeg").json()
    assert first["upload_id"] == second["upload_id"]
    assert first["id"] != second["id"]
    for pid in (first["id"], second["id"]):
        assert stack.wait_status(pid, ("done", "failed", "rejected"))["status"] == "done"
    items = stack.client.get("/v1/uploads", params={"limit": 500}, headers=KEY).json()["items"]
    assert sum(1 for u in items if u["id"] == first["upload_id"]) == 1


def test_label_needs_api_key_and_feeds_the_review_queue(stack: Stack, sample_jpeg: bytes) -> None:
    up = stack.upload(sample_jpeg).json()["upload_id"]
    url = f"/v1/uploads/{up}/label"
    r = stack.client.put(url, json={"label": "NORMAL"})
    assert r.status_code == 401 and r.json()["error"]["code"] == "unauthorized"
    r = stack.client.put(url, json={"label": "NORMAL"}, headers={"X-API-Key": "wrong"})
    assert r.status_code == 403 and r.json()["error"]["code"] == "forbidden"
    r = stack.client.put(url, json={"label": "PNEUMONIA"}, headers=KEY)
    assert r.status_code == 200 and r.json()["label"] == "PNEUMONIA"
    r = stack.client.put(url, json={"label": "NORMAL"}, headers=KEY)  # a re-review overwrites
    assert r.status_code == 200
    stats = stack.client.get("/v1/uploads/stats", headers=KEY).json()
    assert stats["reviewed"] >= 1 and stats["by_label"].get("NORMAL", 0) >= 1
    todo = stack.client.get("/v1/uploads", params={"unlabelled": "true"}, headers=KEY).json()
    assert all(u["id"] != up and u["reviewed_label"] is None for u in todo["items"])
    stamps = [u["created_at"] for u in todo["items"]]
    assert stamps == sorted(stamps, reverse=True)


def test_worker_killed_mid_task_job_completes_after_restart(
    stack: Stack, full_res_jpegs: list[Path]
) -> None:
    stack.stop_worker()
    stack.start_worker({"TASK_DELAY_SECONDS": "6"}, wait=False)
    pid = stack.upload(full_res_jpegs[2].read_bytes()).json()["id"]
    stack.wait_status(pid, ("running",), timeout=180)
    stack.kill_worker()  # SIGKILL while the job sleeps inside the task
    assert stack.client.get(f"/v1/predictions/{pid}").json()["status"] == "running"
    stack.start_worker(wait=False)
    done = stack.wait_status(pid, ("done", "failed", "rejected"), timeout=180)
    assert done["status"] == "done", done
    stack.wait_ready()


def test_gate_rejection_ends_as_rejected(stack: Stack, samples_dir: Path) -> None:
    """A chart is no X-ray: the worker's gate rejects it; the codes are the gate's own tests."""
    data = (samples_dir / "natural" / "chart_confusion_matrix.png").read_bytes()
    r = stack.upload(data, name="chart.png", ctype="image/png")
    assert r.status_code == 202, r.text
    body = stack.wait_status(r.json()["id"], ("done", "failed", "rejected"))
    assert body["status"] == "rejected" and body["result"] is None, body
    rej = body["rejection"]
    assert isinstance(rej["code"], str) and rej["message"] and isinstance(rej["checks"], dict)
    assert stack.client.get(f"/v1/predictions/{body['id']}/heatmap.png").status_code == 404
