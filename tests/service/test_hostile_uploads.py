"""Hostile uploads against the real stack (API + worker processes, SQLite): identifiers never
reach the disk, bombs get a clear 4xx while the API's memory stays bounded and /healthz answers.
"""

from __future__ import annotations

import io
import re
import select
import socket
import struct
import threading
import time
import uuid
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import cv2
import httpx
import numpy as np
import pytest

from tests.dicom_factory import base_dataset, jpeg_frames_dicom, phi_dataset, to_bytes
from tests.service_support import Stack

pytestmark = pytest.mark.services
# The bound the README states for one request's extra RSS in the API process.
API_REQUEST_RSS_BOUND_MB = 250
# ... and for one job in a worker (decoding the one frame, gate, model, heatmap).
WORKER_JOB_RSS_BOUND_MB = 2000
LIMIT = 30 * 2**20  # the stack runs with the default MAX_UPLOAD_BYTES


# ------------------------------------------------------------------ searching for identifiers


def _files(stack: Stack) -> list[Path]:
    """Every file the stack wrote: data dir (storage, SQLite + WAL files, broker) and logs."""
    roots = [stack.workdir, stack.log_dir]
    return sorted({p for r in roots for p in r.rglob("*") if p.is_file()})


def _table_dump(stack: Stack) -> bytes:
    """Every row of every table of the service's database (SQLite or PostgreSQL) and of the
    SQLite broker when there is one, as text."""
    import sqlalchemy as sa

    urls = [f"sqlite:///{p}" for p in stack.workdir.rglob("*.db")]
    if stack.env.get("DATABASE_URL"):
        urls.append(stack.env["DATABASE_URL"])
    out = []
    for url in urls:
        engine = sa.create_engine(url)
        try:
            meta = sa.MetaData()
            meta.reflect(engine)
            with engine.connect() as con:
                for table in meta.sorted_tables:
                    out += [repr(tuple(row)) for row in con.execute(sa.select(table))]
        finally:
            engine.dispose()
    return "\n".join(out).encode()


def _found(stack: Stack, values: list[bytes], pattern: bytes | None = None) -> list[str]:
    """Where any value (case-insensitive) or the regex pattern occurs; empty = nowhere."""
    hits = []
    blobs = [(str(p), p.read_bytes()) for p in _files(stack)] + [("tables", _table_dump(stack))]
    for where, blob in blobs:
        low = blob.lower()
        hits += [f"{v!r} in {where}" for v in values if v.lower() in low]
        if pattern is not None and re.search(pattern, blob):
            hits.append(f"{pattern!r} in {where}")
    return hits


def _chest_pixels(jpeg: bytes) -> np.ndarray:
    grey = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_GRAYSCALE)
    return cv2.resize(grey, (512, 512), interpolation=cv2.INTER_AREA)


def test_dicom_identifiers_never_at_rest(stack: Stack, sample_jpeg: bytes) -> None:
    sqlite_stack = stack  # both backends: SQLite files, and PostgreSQL + Redis
    ds, values = phi_dataset(_chest_pixels(sample_jpeg))
    ds.SeriesNumber = int(uuid.uuid4().int % 10**6)  # unique bytes for this run
    data = to_bytes(ds)
    assert all(v in data for v in values)  # the test can fail: the upload carries them all
    r = sqlite_stack.upload(data, name="Mustermann_Erika_19870603.dcm", ctype="application/dicom")
    assert r.status_code == 202, r.text
    done = sqlite_stack.wait_status(r.json()["id"], ("done", "rejected", "failed"))
    assert done["status"] in ("done", "rejected"), done
    search = [v for v in values if len(v) >= 8] + [b"Mustermann"]
    assert not _found(sqlite_stack, search, rb"PHIX\d{5}")


def test_jpeg_file_name_and_metadata_not_stored(stack: Stack, sample_jpeg: bytes) -> None:
    """A JPEG named after a person, whose EXIF and comment name her too."""
    sqlite_stack = stack
    from PIL import Image

    pixels = _chest_pixels(sample_jpeg)
    pixels[0, :16] = np.frombuffer(uuid.uuid4().bytes, np.uint8)  # unique bytes for this run
    exif = Image.Exif()
    exif[0x010E] = "CHEST OF GRETCHEN QUACKENBUSH"  # ImageDescription
    exif[0x013B] = "DR YURI ZHIVAGO"  # Artist
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "JPEG", exif=exif, comment=b"QUACKENBUSH 1961-02-17")
    data = buf.getvalue()
    names = [b"Quackenbush", b"Gretchen", b"Zhivago"]
    assert all(n.upper() in data for n in names)
    r = sqlite_stack.upload(data, name="Quackenbush, Gretchen 1961-02-17.jpeg")
    assert r.status_code == 202, r.text
    sqlite_stack.wait_status(r.json()["id"], ("done", "rejected", "failed"))
    assert not _found(sqlite_stack, names)


# ------------------------------------------------------------------ bombs


def _status(pid: int) -> dict[str, int]:
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            fields[key] = int(rest.split()[0]) // 1024  # MB
    return fields


@contextmanager
def _watch(stack: Stack) -> Iterator[dict]:
    """Peak RSS of the API process over the block (VmHWM reset first, and sampled), and
    /healthz polled from another connection all the while."""
    assert stack.api is not None
    pid = stack.api.pid
    Path(f"/proc/{pid}/clear_refs").write_text("5")  # reset the peak-RSS counter
    out: dict = {"idle": _status(pid)["VmRSS"], "peak": 0, "health": []}
    stop = threading.Event()

    def poll() -> None:
        with httpx.Client(base_url=stack.base, timeout=10) as c:
            while not stop.is_set():
                out["peak"] = max(out["peak"], _status(pid)["VmRSS"])
                try:
                    out["health"].append(c.get("/healthz").status_code)
                except httpx.HTTPError as exc:
                    out["health"].append(type(exc).__name__)
                stop.wait(0.05)

    t = threading.Thread(target=poll, daemon=True)
    t.start()
    deadline = time.monotonic() + 10
    while not out["health"] and time.monotonic() < deadline:  # polling has begun
        time.sleep(0.01)
    try:
        yield out
    finally:
        time.sleep(0.1)  # one more poll after the answer
        stop.set()
        t.join(timeout=15)
        out["peak"] = max(out["peak"], _status(pid)["VmHWM"])


def _jpeg_declaring(w: int, h: int) -> bytes:
    ok, buf = cv2.imencode(".jpg", np.full((16, 16), 128, np.uint8))
    assert ok
    data = bytearray(buf.tobytes())
    sof = data.index(b"\xff\xc0")
    data[sof + 5 : sof + 9] = struct.pack(">HH", h, w)
    return bytes(data)


def _png_declaring(w: int, h: int) -> bytes:
    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = struct.pack(">I", zlib.crc32(kind + body))
        return struct.pack(">I", len(body)) + kind + body + crc

    idat = zlib.compress(b"\x00" * (w + 1) * 64, 9)  # the first rows of a grey image
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def _chunked_upload(stack: Stack, total: int, chunk: int = 1 << 16) -> tuple[int, bytes, int]:
    """A multipart upload sent with Transfer-Encoding: chunked (no Content-Length), stopped
    as soon as the server answers. Returns (status, body, bytes sent)."""
    b = "hostileboundary"
    head = (
        f"POST /v1/predictions HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n"
        f"Content-Type: multipart/form-data; boundary={b}\r\n\r\n"
    ).encode()
    part = (
        f'--{b}\r\nContent-Disposition: form-data; name="file"; filename="big.jpg"\r\n'
        "Content-Type: image/jpeg\r\n\r\n"
    ).encode() + b"\xff\xd8\xff"
    payload, sent, resp = b"\0" * chunk, 0, b""
    with socket.create_connection(("127.0.0.1", stack.port), timeout=30) as s:
        try:
            s.sendall(head + f"{len(part):x}\r\n".encode() + part + b"\r\n")
            while sent < total and not select.select([s], [], [], 0)[0]:
                s.sendall(f"{chunk:x}\r\n".encode() + payload + b"\r\n")
                sent += chunk
        except OSError:
            pass  # the server stopped reading and closed: its answer is already here
        while b"\r\n\r\n" not in resp or len(resp.split(b"\r\n\r\n", 1)[1]) < 20:
            data = s.recv(65536)
            if not data:
                break
            resp += data
    status = int(resp.split(b" ", 2)[1]) if resp.startswith(b"HTTP/1.1") else 0
    return status, resp.split(b"\r\n\r\n", 1)[-1], sent


def test_bombs_get_a_clear_4xx_with_bounded_api_memory(sqlite_stack: Stack) -> None:
    stack = sqlite_stack
    cases = {
        "multiframe_dicom": (jpeg_frames_dicom(400, 2048), "application/dicom", "too_large"),
        "jpeg_30000": (_jpeg_declaring(30000, 30000), "image/jpeg", "too_large"),
        "png_30000": (_png_declaring(30000, 30000), "image/png", "too_large"),
    }
    seen = {}
    for name, (data, ctype, code) in cases.items():
        assert len(data) < LIMIT
        with _watch(stack) as w:
            t0 = time.perf_counter()
            r = stack.upload(data, name="x", ctype=ctype)
            took = time.perf_counter() - t0
        seen[name] = (r.status_code, w["peak"] - w["idle"], round(took, 2))
        assert r.status_code == 413 and r.json()["error"]["code"] == code, (name, r.text)
        assert w["peak"] - w["idle"] < API_REQUEST_RSS_BOUND_MB, (name, w)
        assert w["health"] and all(h == 200 for h in w["health"]), (name, w["health"])
    with _watch(stack) as w:
        status, body, sent = _chunked_upload(stack, 2 * LIMIT)
    seen["chunked_2x_limit"] = (status, w["peak"] - w["idle"], sent)
    assert status == 413 and b"too_large" in body, body
    assert sent < 2 * LIMIT  # the API stopped reading at the limit
    assert w["peak"] - w["idle"] < API_REQUEST_RSS_BOUND_MB, w
    assert w["health"] and all(h == 200 for h in w["health"]), w["health"]
    print("bomb results (status, API peak RSS over idle MB, seconds|bytes sent):", seen)


# ------------------------------------------------------------------ the largest legitimate uploads


def _peak_over_idle(pid: int, run) -> tuple[object, int]:
    """(run's result, the process's peak RSS over its idle RSS in MB) via VmHWM."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")
    idle = _status(pid)["VmRSS"]
    result = run()
    return result, _status(pid)["VmHWM"] - idle


def test_largest_accepted_uploads_memory(sqlite_stack: Stack, sample_jpeg: bytes) -> None:
    """The README's per-request (API) and per-job (worker) memory figures, measured: a DICOM
    just under the byte limit and a JPEG just under the pixel limit, each through to the end."""
    from service.settings import Settings

    stack, max_pixels = sqlite_stack, Settings().max_pixels
    assert stack.api is not None and stack.worker is not None
    side = int((LIMIT * 0.95 / 2) ** 0.5)  # 16-bit, uncompressed, under the byte limit
    grey = cv2.imdecode(np.frombuffer(sample_jpeg, np.uint8), cv2.IMREAD_GRAYSCALE)
    big = cv2.resize(grey, (side, side)).astype(np.uint16) * 16 + np.uint16(uuid.uuid4().int % 7)
    dicom = to_bytes(base_dataset(big, BitsStored=12, HighBit=11))
    jside = int(max_pixels**0.5) - 8
    ok, jpg = cv2.imencode(".jpg", cv2.resize(grey, (jside, jside)), [cv2.IMWRITE_JPEG_QUALITY, 80])
    assert ok and len(jpg) < LIMIT
    figures = {}
    uploads = (("dicom", dicom, "application/dicom"), ("jpeg", jpg.tobytes(), "image/jpeg"))
    for name, data, ctype in uploads:
        r, api_mb = _peak_over_idle(stack.api.pid, lambda d=data, c=ctype: stack.upload(d, "x", c))
        assert r.status_code == 202, r.text
        pid = r.json()["id"]
        done, job_mb = _peak_over_idle(
            stack.worker.pid, lambda p=pid: stack.wait_status(p, ("done", "rejected", "failed"))
        )
        assert done["status"] in ("done", "rejected"), done
        figures[name] = {"bytes": len(data), "api_mb": api_mb, "job_mb": job_mb}
        assert api_mb < API_REQUEST_RSS_BOUND_MB, figures
        assert job_mb < WORKER_JOB_RSS_BOUND_MB, figures
    print("largest accepted uploads (peak RSS over idle):", figures)


# ------------------------------------------------------------------ in-process: parts and names


def test_multipart_part_limits(client, sample_jpeg: bytes) -> None:
    """More file parts, or more text fields, than the settings allow: a clear 400."""
    two = [("file", ("a.jpeg", sample_jpeg, "image/jpeg")), ("file", ("b.jpeg", b"x", "x/y"))]
    r = client.post("/v1/predictions", files=two)
    assert r.status_code == 400 and "files" in r.json()["error"]["message"].lower(), r.text
    fields = {f"f{i}": "v" for i in range(5)}
    r = client.post("/v1/predictions", files={"file": ("a.jpeg", sample_jpeg)}, data=fields)
    assert r.status_code == 400 and "fields" in r.json()["error"]["message"].lower(), r.text


def test_file_names_kept_only_when_enabled(tmp_path: Path, sample_jpeg: bytes) -> None:
    from fastapi.testclient import TestClient

    from service.api import create_app
    from tests.service_support import API_KEY, make_publisher, make_settings

    for keep, expected in (
        (False, r"upload-[0-9a-f]{8}\.jpeg"),
        (True, "Gretchen_Quackenbush.jpeg"),
    ):
        settings = make_settings(tmp_path / str(keep), store_client_filenames=keep)
        pub = make_publisher(settings)
        try:
            with TestClient(create_app(settings, pub)) as c:
                part = ("Gretchen Quackenbush.jpeg", sample_jpeg, "image/jpeg")
                r = c.post("/v1/predictions", files={"file": part})
                assert r.status_code == 202, r.text
                items = c.get("/v1/uploads", headers={"X-API-Key": API_KEY}).json()["items"]
                assert re.fullmatch(expected, items[0]["original_name"]), items[0]
        finally:
            pub.app.close()
