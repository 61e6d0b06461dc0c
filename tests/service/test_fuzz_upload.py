"""Property-based fuzzing of POST /v1/predictions: whatever arrives, never a 500."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from service.api import create_app
from tests.service_support import make_publisher, make_settings

OK = {202, 413, 415, 422}
NAMES = st.sampled_from(["x.jpeg", "x.png", "x.dcm", "../../etc/passwd", "", "a\x00b.jpg", "é.png"])
TYPES = st.sampled_from(["image/jpeg", "image/png", "application/dicom", "text/html", ""])
FUZZ = settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@pytest.fixture(scope="module")
def fuzz_client(tmp_path_factory: pytest.TempPathFactory):
    s = make_settings(tmp_path_factory.mktemp("fuzz"), max_upload_bytes=2_000_000)
    pub = make_publisher(s)  # accepted uploads are really published to the SQLite broker
    with TestClient(create_app(s, pub), raise_server_exceptions=False) as c:
        yield c
    pub.app.close()


def png_header(width: int, height: int) -> bytes:
    """A PNG whose IHDR declares any size, with one tiny IDAT: a decompression bomb's shape."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    chunk = lambda t, d: struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d))  # noqa: E731
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64))


def check(client: TestClient, data: bytes, name: str, ctype: str) -> None:
    r = client.post("/v1/predictions", files={"file": (name, data, ctype)})
    assert r.status_code in OK, (r.status_code, r.text)
    if r.status_code != 202:
        err = r.json()["error"]
        assert set(err) == {"code", "message"} and "Traceback" not in err["message"]


@FUZZ
@given(data=st.binary(max_size=4096), name=NAMES, ctype=TYPES)
def test_random_bytes(fuzz_client: TestClient, data: bytes, name: str, ctype: str) -> None:
    check(fuzz_client, data, name, ctype)


@FUZZ
@given(cut=st.integers(0, 200_000), name=NAMES, ctype=TYPES)
def test_truncated_jpeg(fuzz_client, full_res_jpegs: list[Path], cut: int, name, ctype) -> None:
    data = full_res_jpegs[0].read_bytes()
    check(fuzz_client, data[: cut % len(data)], name, ctype)


@FUZZ
@given(w=st.integers(0, 2**31 - 1), h=st.integers(0, 2**31 - 1), name=NAMES, ctype=TYPES)
def test_png_declaring_huge_dimensions(fuzz_client, w: int, h: int, name, ctype) -> None:
    check(fuzz_client, png_header(w, h), name, ctype)


@FUZZ
@given(prefix=st.sampled_from([b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"\x08\x00\x05\x00"]),
       tail=st.binary(max_size=2048), name=NAMES, ctype=TYPES)  # fmt: skip
def test_right_magic_wrong_body(fuzz_client, prefix: bytes, tail: bytes, name, ctype) -> None:
    check(fuzz_client, prefix + tail, name, ctype)


def test_dicom_preamble_with_garbage(fuzz_client) -> None:
    check(fuzz_client, b"\0" * 128 + b"DICM" + b"\x02\x00" * 500, "x.dcm", "application/dicom")
