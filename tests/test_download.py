"""Kaggle download: skip when complete, clear errors without credentials or network.

There is no network to Kaggle in the test environment, so the real client is
exercised only up to its network failure (in a subprocess with a hard timeout,
so a hang fails the test instead of stalling the suite).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

import study.data.download as dl
from study.data.download import EXPECTED_COUNTS, DownloadError, download, is_complete

REPO = Path(__file__).resolve().parents[1]
KAGGLE_ENV = ("KAGGLE_USERNAME", "KAGGLE_KEY", "KAGGLE_API_TOKEN", "KAGGLE_CONFIG_DIR")


def fake_release(root: Path, scale: dict[str, dict[str, int]] = EXPECTED_COUNTS) -> Path:
    """Empty files in the Kaggle layout with the release's counts."""
    for split, per_cls in scale.items():
        for cls, n in per_cls.items():
            d = root / split / cls
            d.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                (d / f"{cls[:1]}{i:05d}.jpeg").touch()
    return root


@pytest.fixture
def no_credentials(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(home / ".config"))
    for k in KAGGLE_ENV:
        monkeypatch.delenv(k, raising=False)
    return home


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_complete_folder_is_skipped(tmp_path, no_credentials, monkeypatch):
    dest = fake_release(tmp_path / "chest_xray")
    assert is_complete(dest)

    def boom(*a, **k):
        raise AssertionError("must not touch the network or the Kaggle client")

    monkeypatch.setattr(dl, "check_network", boom)
    monkeypatch.setattr(dl, "_make_api", boom)
    assert download(dest) == dest


SMALL = {"train": {"NORMAL": 4, "PNEUMONIA": 5}, "val": {"NORMAL": 2, "PNEUMONIA": 2},
         "test": {"NORMAL": 3, "PNEUMONIA": 3}}  # fmt: skip


def test_incomplete_folder_is_not_overwritten(tmp_path, no_credentials, monkeypatch):
    monkeypatch.setattr(dl, "EXPECTED_COUNTS", SMALL)
    dest = fake_release(tmp_path / "chest_xray", {"train": SMALL["train"]})
    with pytest.raises(DownloadError, match="val/NORMAL: 0 of 2") as e:
        download(dest)
    assert "--data-dir" in str(e.value)
    assert len(list((dest / "train" / "NORMAL").iterdir())) == 4


def test_missing_credentials_is_a_clear_error(tmp_path, no_credentials):
    t0 = time.monotonic()
    with pytest.raises(DownloadError) as e:
        download(tmp_path / "chest_xray")
    msg = str(e.value)
    assert "no Kaggle credentials" in msg and "kaggle.json" in msg and "KAGGLE_KEY" in msg
    assert "--data-dir" in msg
    assert time.monotonic() - t0 < 5
    assert not (tmp_path / "chest_xray").exists()


def _run_isolated(code: str, home: Path, extra_env: dict[str, str], timeout: float = 90) -> str:
    """Run code in a fresh interpreter (kaggle's import side effects stay in ``home``)."""
    env = {k: v for k, v in os.environ.items() if k not in KAGGLE_ENV and "proxy" not in k.lower()}
    env |= {"HOME": str(home), "XDG_CONFIG_HOME": str(home / ".config"), "PYTHONPATH": str(REPO)}
    env |= extra_env
    t0 = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,  # a hang fails here instead of stalling the suite
    )
    assert time.monotonic() - t0 < 60, "took too long to fail"
    return proc.stdout + proc.stderr


CATCH = """
from pathlib import Path
import study.data.download as dl
{patch}
try:
    dl.download(Path({dest!r}))
except dl.DownloadError as e:
    print("DOWNLOAD_ERROR:", e)
"""


def test_no_network_fails_fast_with_fake_credentials(tmp_path):
    """Fake credentials and an unreachable HTTPS proxy: the up-front check fails in seconds."""
    proxy = f"http://127.0.0.1:{_closed_port()}"
    out = _run_isolated(
        CATCH.format(patch="", dest=str(tmp_path / "chest_xray")),
        tmp_path,
        {"KAGGLE_USERNAME": "nobody", "KAGGLE_KEY": "0" * 32, "HTTPS_PROXY": proxy},
    )
    assert f"DOWNLOAD_ERROR: cannot reach {dl.KAGGLE_HOST} via proxy" in out, out
    assert "--data-dir" in out


def test_real_kaggle_client_network_error_becomes_download_error(tmp_path):
    """Skip the up-front check: the real kaggle client must fail (not hang) and be wrapped."""
    proxy = f"http://127.0.0.1:{_closed_port()}"
    out = _run_isolated(
        CATCH.format(
            patch="dl.check_network = lambda *a, **k: None", dest=str(tmp_path / "chest_xray")
        ),
        tmp_path,
        {
            "KAGGLE_USERNAME": "nobody",
            "KAGGLE_KEY": "0" * 32,
            "HTTPS_PROXY": proxy,
            "https_proxy": proxy,
        },
    )
    assert "DOWNLOAD_ERROR: downloading paultimothymooney/chest-xray-pneumonia failed" in out, out
    assert "--data-dir" in out
    assert not (tmp_path / ".chest_xray.download").exists()


def test_no_network_without_proxy(tmp_path):
    """Whatever the environment (no DNS here, maybe network in CI): a DownloadError, quickly."""
    out = _run_isolated(
        CATCH.format(patch="", dest=str(tmp_path / "chest_xray")),
        tmp_path,
        {"KAGGLE_USERNAME": "nobody", "KAGGLE_KEY": "0" * 32},
    )
    assert "DOWNLOAD_ERROR:" in out, out


def test_stalled_download_is_abandoned(tmp_path):
    """The Kaggle client sets no socket timeouts: the watchdog must give up on a stall."""
    t0 = time.monotonic()
    with pytest.raises(DownloadError, match="stalled"):
        dl._run_with_watchdog(lambda: time.sleep(30), tmp_path, stall_seconds=1.0)
    assert time.monotonic() - t0 < 10


def test_download_normalises_the_nested_zip_layout(tmp_path, no_credentials, monkeypatch):
    """A fake client writes what the Kaggle zip unpacks to; dest gets plain train/val/test."""
    monkeypatch.setenv("KAGGLE_USERNAME", "nobody")
    monkeypatch.setenv("KAGGLE_KEY", "x")
    monkeypatch.setattr(dl, "check_network", lambda *a, **k: None)
    monkeypatch.setattr(dl, "EXPECTED_COUNTS", SMALL)  # the layout logic, not 5,856 files

    class FakeApi:
        def dataset_download_files(self, dataset, path, quiet, unzip):
            assert dataset == "paultimothymooney/chest-xray-pneumonia" and unzip
            top = Path(path) / "chest_xray"
            fake_release(top, SMALL)
            fake_release(top / "chest_xray", {"train": {"NORMAL": 3, "PNEUMONIA": 2}})
            junk = Path(path) / "__MACOSX" / "chest_xray" / "train" / "NORMAL"
            junk.mkdir(parents=True)
            (junk / "._N00000.jpeg").write_bytes(b"\0")
            (top / "train" / "NORMAL" / "._N00000.jpeg").write_bytes(b"\0")

    monkeypatch.setattr(dl, "_make_api", FakeApi)
    dest = tmp_path / "data" / "chest_xray"
    assert download(dest) == dest
    assert is_complete(dest)
    assert sorted(p.name for p in dest.iterdir()) == ["test", "train", "val"]
    assert not list(dest.rglob("._*"))
    assert not (tmp_path / "data" / ".chest_xray.download").exists()
