"""The load benchmark's accounting: an upload counts only as done, rejected, or refused
with nothing left behind; anything else is unaccounted for (and fails the run)."""

from __future__ import annotations

from benchmarks.load_bench import images, summarise


def _run(results: list[dict]) -> dict:
    return {"results": results, "wall": 10.0, "peak": {"api": 2**20, "worker": 2**21}, "kills": 1}


def test_every_upload_must_be_accounted_for() -> None:
    results = [
        {"code": "202", "status": "done", "seconds": 1.0},
        {"code": "202", "status": "rejected", "seconds": 3.0},
        {"code": "503", "retry_after": "10"},
        {"code": "429", "retry_after": "5"},
    ]
    row = summarise(_run(results), leaks=0, n=4)
    assert row["accounted_for"] == 4 and row["unaccounted"] == 0
    assert row["http_codes"] == {"202": 2, "503": 1, "429": 1}
    assert row["e2e_p50_s"] == 2.0 and row["peak_rss_worker_mb"] == 2
    # a refused upload that left a row or file, a failed job, a lost one, a 500: not accounted
    bad = results + [
        {"code": "202", "status": "failed", "seconds": 1.0},
        {"code": "202", "status": "lost"},
        {"code": "500"},
    ]
    assert summarise(_run(bad), leaks=1, n=7)["unaccounted"] == 4


def test_images_are_distinct(samples_dir) -> None:  # type: ignore[no-untyped-def]
    src = sorted((samples_dir / "kermany_full_res" / "val" / "NORMAL").glob("*.jpeg"))[0]
    blobs = images(src, 5)
    assert len(set(blobs)) == 5 and all(b[:2] == b"\xff\xd8" for b in blobs)
