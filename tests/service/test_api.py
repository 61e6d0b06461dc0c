"""The API in-process (TestClient, real SQLite broker): contract, limits, errors, security."""

from __future__ import annotations

import logging

from fastapi.testclient import TestClient

from service.api import create_app
from service.intake import sanitise_name
from service.settings import Settings
from tests.service_support import (
    API_KEY,
    make_settings,
    queued_prediction_ids,
    unreachable_broker_publisher,
)


def test_upload_is_queued_with_status_url(client: TestClient, app_settings: Settings, sample_jpeg):
    r = client.post("/v1/predictions", files={"file": ("x.png", sample_jpeg, "image/png")})
    assert r.status_code == 202
    body = r.json()
    assert body["status"] == "queued" and queued_prediction_ids(app_settings) == [body["id"]]
    assert r.headers["location"] == body["status_url"]
    got = client.get(body["status_url"]).json()
    assert set(got) >= {"id", "status", "created_at", "finished_at", "upload_id", "result"}
    assert got["status"] == "queued" and got["result"] is None and got["rejection"] is None
    r = client.get(f"{body['status_url']}/heatmap.png")
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"


def test_unreadable_content_is_415_with_error_body(client: TestClient) -> None:
    r = client.post("/v1/predictions", files={"file": ("x.jpeg", b"GIF89a not ours", "image/jpeg")})
    assert r.status_code in (415, 422)
    assert set(r.json()["error"]) == {"code", "message"}


def test_missing_file_is_422(client: TestClient) -> None:
    r = client.post("/v1/predictions", data={"nofile": "1"})
    assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_request"


def test_size_limit_413_from_body_and_from_header(tmp_path, sample_jpeg: bytes) -> None:
    s = make_settings(tmp_path, max_upload_bytes=10_000)
    with TestClient(create_app(s), raise_server_exceptions=False) as c:
        r = c.post(
            "/v1/predictions", files={"file": ("x.jpeg", sample_jpeg[:60_000], "image/jpeg")}
        )
        assert r.status_code == 413 and r.json()["error"]["code"] == "too_large"
        r = c.post("/v1/predictions", files={"file": ("x.jpeg", sample_jpeg[:9_000], "image/jpeg")})
        assert r.status_code != 413


def test_broker_down_refuses_upload_and_leaves_no_queued_job(
    app_settings: Settings, sample_jpeg: bytes
) -> None:
    down = unreachable_broker_publisher(app_settings)  # a real connection refusal
    with TestClient(create_app(app_settings, down), raise_server_exceptions=False) as client:
        r = client.post("/v1/predictions", files={"file": ("x.jpeg", sample_jpeg, "image/jpeg")})
        assert r.status_code == 503 and r.json()["error"]["code"] == "broker_unavailable"
        ready = client.get("/readyz")
        assert ready.status_code == 503 and ready.json()["checks"]["broker"] != "ok"
        listing = client.get("/v1/uploads", headers={"X-API-Key": API_KEY}).json()
        assert all(u["prediction"] is None for u in listing["items"])
    down.app.close()


def test_readyz_names_missing_model(client: TestClient) -> None:
    r = client.get("/readyz")
    assert r.status_code == 503
    checks = r.json()["checks"]
    assert checks["database"] == "ok" and checks["broker"] == "ok" and checks["model"] != "ok"
    assert client.get("/healthz").json() == {"status": "ok"}


def test_unknown_ids_are_404(client: TestClient) -> None:
    for url in ("/v1/predictions/nope", "/v1/predictions/" + "0" * 32, "/v1/predictions/../x"):
        r = client.get(url)
        assert r.status_code == 404 and "error" in r.json()
    r = client.put("/v1/uploads/" + "0" * 32 + "/label", json={"label": "NORMAL"},
                   headers={"X-API-Key": API_KEY})  # fmt: skip
    assert r.status_code == 404


def test_label_validation_and_key(client: TestClient, sample_jpeg: bytes) -> None:
    up = client.post("/v1/predictions", files={"file": ("a", sample_jpeg, "")}).json()["upload_id"]
    url = f"/v1/uploads/{up}/label"
    assert client.put(url, json={"label": "NORMAL"}).status_code == 401
    assert client.put(url, json={"label": "x"}).status_code == 401  # auth before validation
    assert client.put(url, json={"label": "x"}, headers={"X-API-Key": API_KEY}).status_code == 422
    assert client.get("/v1/uploads").status_code == 401
    assert client.get("/v1/uploads/stats", headers={"X-API-Key": "bad"}).status_code == 403


def test_no_api_key_configured_refuses_everyone(tmp_path) -> None:
    s = make_settings(tmp_path)
    s = s.model_copy(update={"api_key": None})
    with TestClient(create_app(s)) as c:
        assert c.get("/v1/uploads", headers={"X-API-Key": ""}).status_code == 401
        assert c.get("/v1/uploads", headers={"X-API-Key": "anything"}).status_code == 403


def test_unhandled_error_is_json_without_traceback(tmp_path) -> None:
    app = create_app(make_settings(tmp_path))

    @app.get("/boom")
    def boom() -> None:
        raise RuntimeError("secret internals /etc/passwd")

    with TestClient(app, raise_server_exceptions=False) as c:
        r = c.get("/boom")
    assert r.status_code == 500
    assert r.json() == {"error": {"code": "internal", "message": "internal error"}}


def test_cors_closed_by_default_and_open_when_configured(tmp_path) -> None:
    pre = {"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"}
    with TestClient(create_app(make_settings(tmp_path / "a"))) as c:
        r = c.options("/v1/predictions", headers=pre)
        assert "access-control-allow-origin" not in r.headers
    s = make_settings(tmp_path / "b", cors_origins="https://ui.example")
    with TestClient(create_app(s)) as c:
        ok = {**pre, "Origin": "https://ui.example"}
        assert (
            c.options("/v1/predictions", headers=ok).headers.get("access-control-allow-origin")
            == "https://ui.example"
        )
        assert (
            "access-control-allow-origin" not in c.options("/v1/predictions", headers=pre).headers
        )


def test_api_key_never_logged(client: TestClient, caplog, sample_jpeg: bytes) -> None:
    caplog.set_level(logging.DEBUG)
    up = client.post("/v1/predictions", files={"file": ("a", sample_jpeg, "")}).json()["upload_id"]
    client.put(f"/v1/uploads/{up}/label", json={"label": "NORMAL"}, headers={"X-API-Key": API_KEY})
    client.put(f"/v1/uploads/{up}/label", json={"label": "NORMAL"}, headers={"X-API-Key": "guess"})
    assert API_KEY not in caplog.text and "guess" not in caplog.text


def test_metrics_exposes_requests_and_jobs(client: TestClient, sample_jpeg: bytes) -> None:
    client.post("/v1/predictions", files={"file": ("a", sample_jpeg, "")})
    text = client.get("/metrics").text
    assert (
        'pneumoscope_http_requests_total{method="POST",route="/v1/predictions",status="202"}'
        in text
    )
    assert 'pneumoscope_queue_depth{state="queued"} 1.0' in text
    assert "pneumoscope_inference_seconds_count" in text


def test_sanitise_name_never_yields_a_path() -> None:
    assert sanitise_name("../../etc/passwd") == "passwd"
    assert sanitise_name("C:\\Users\\x\\scan 1.dcm") == "scan_1.dcm"
    assert sanitise_name("") == "upload" and sanitise_name("..") == "upload"
    assert "/" not in sanitise_name("a/b\\c/../d" * 50) and len(sanitise_name("x" * 999)) <= 100


def test_upload_preview_png_needs_key(client: TestClient, sample_jpeg: bytes) -> None:
    up = client.post("/v1/predictions", files={"file": ("a", sample_jpeg, "")}).json()["upload_id"]
    assert client.get(f"/v1/uploads/{up}/image.png").status_code == 401
    r = client.get(f"/v1/uploads/{up}/image.png", headers={"X-API-Key": API_KEY})
    assert r.status_code == 200 and r.content[:4] == b"\x89PNG"


def test_database_unavailable_is_503_not_500(tmp_path, sample_jpeg: bytes) -> None:
    from service.settings import Settings

    s = Settings(data_dir=tmp_path, database_url=None, api_key=API_KEY)  # never migrated
    with TestClient(create_app(s), raise_server_exceptions=False) as c:
        r = c.post("/v1/predictions", files={"file": ("a.jpeg", sample_jpeg, "image/jpeg")})
        assert r.status_code == 503 and r.json()["error"]["code"] == "database_unavailable"
        assert c.get("/readyz").json()["checks"]["database"] != "ok"
