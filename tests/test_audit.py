"""Audit: duplicates, corrupt files, 16-bit input, cross-split leaks, cache."""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

import study.data.audit as audit_mod
from study.data.audit import PHASH_BITS, _hamming_pairs, _pack, audit_dataset
from study.data.preprocess import decode
from study.data.records import CLASS_NAMES, check_no_leakage, make_splits, patient_and_subtype, scan

PER_CLASS = 30


def make_subset(data_dir: Path, root: Path, per_class: int = PER_CLASS) -> Path:
    """Copy an evenly spaced ~per_class images per class into root/train (Kaggle layout)."""
    for cls in CLASS_NAMES:
        files = sorted((data_dir / "train" / cls).iterdir())
        step = max(1, len(files) // per_class)
        dst = root / "train" / cls
        dst.mkdir(parents=True, exist_ok=True)
        for f in files[::step][:per_class]:
            shutil.copy2(f, dst / f.name)
    return root


def spare_image(data_dir: Path, root: Path, cls: str) -> Path:
    """A training image of ``cls`` that is not in the subset (fresh pixels, no duplicate)."""
    used = {p.name for p in (root / "train" / cls).iterdir()}
    for f in sorted((data_dir / "train" / cls).iterdir(), reverse=True):
        if f.name not in used:
            return f
    raise AssertionError("no spare image")


@pytest.fixture
def subset(data_dir: Path, tmp_path: Path) -> Path:
    return make_subset(data_dir, tmp_path / "chest_xray")


def _first(root: Path, cls: str, k: int = 0) -> Path:
    return sorted((root / "train" / cls).iterdir())[k]


def _row(report, path: Path):
    return next(r for r in report.rows if Path(r.path) == path)


def test_audit_reads_every_file_with_a_pool(subset, tmp_path, monkeypatch):
    monkeypatch.setattr(audit_mod, "MIN_FILES_FOR_POOL", 0)  # exercise the process pool
    records = scan(subset)
    report = audit_dataset(records, workers=2, progress=True, cache_dir=tmp_path / "cache")
    assert len(report.rows) == len(records) == 2 * PER_CLASS
    assert report.corrupt == []
    assert report.counts() == {"train": {"NORMAL": 30, "PNEUMONIA": 30, "total": 60}}
    for r in report.rows:
        assert (r.width, r.height, r.bit_depth) == (224, 224, 8)
        assert len(r.sha256) == 64 and len(r.phash) == PHASH_BITS // 4
        assert 0 < r.mean < 1 and 0 < r.std < 1 and r.sharpness > 0
    st = report.stats()
    assert st["NORMAL"]["n"] == st["PNEUMONIA"]["n"] == PER_CLASS
    assert st["NORMAL"]["width"]["median"] == 224
    blob = json.loads(json.dumps(report.to_json(include_rows=True)))
    assert blob["n_files"] == 60 and len(blob["rows"]) == 60
    assert "exact duplicates" in report.summary()


def test_exact_and_near_duplicates_are_found_and_kept_in_one_split(subset, tmp_path):
    normal, pneu = subset / "train" / "NORMAL", subset / "train" / "PNEUMONIA"
    a, b, c = _first(subset, "NORMAL", 0), _first(subset, "NORMAL", 1), _first(subset, "PNEUMONIA")
    # Exact: same bytes under another patient's name.
    a_copy = normal / "IM-9001-0001.jpeg"
    shutil.copy(a, a_copy)
    # Near: re-encoded at another JPEG quality; and a resized copy.
    img_b = cv2.imread(str(b), cv2.IMREAD_GRAYSCALE)
    b_near = normal / "IM-9002-0001.jpeg"
    cv2.imwrite(str(b_near), img_b, [cv2.IMWRITE_JPEG_QUALITY, 70])
    img_c = cv2.imread(str(c), cv2.IMREAD_UNCHANGED)
    c_near = pneu / "person9003_bacteria_1.jpeg"
    cv2.imwrite(str(c_near), cv2.resize(img_c, (190, 190), interpolation=cv2.INTER_AREA))

    records = scan(subset)
    report = audit_dataset(records, workers=1, progress=False, cache_dir=tmp_path / "cache")
    assert sorted([str(a), str(a_copy)]) in report.exact_duplicates
    near = [set(cl) for cl in report.near_duplicates]
    assert {str(b), str(b_near)} in near
    assert {str(c), str(c_near)} in near
    # No false positives: every near cluster holds one of the copies this test made.
    made = {str(b_near), str(c_near)}
    assert all(cl & made for cl in near), report.near_duplicates
    assert report.cross_patient_clusters() >= 3

    linked = report.linked_clusters()
    assert len(linked) == len(report.exact_duplicates) + len(report.near_duplicates)
    plan = make_splits(records, linked=linked, seed=3)
    check_no_leakage(plan, linked)
    found = report.cross_split(plan)["plan"]
    assert found == {"patients": [], "duplicates": []}


def test_corrupt_files_are_listed_not_fatal(subset, tmp_path):
    normal = subset / "train" / "NORMAL"
    data = _first(subset, "NORMAL").read_bytes()
    (normal / "IM-9101-0001.jpeg").write_bytes(data[: len(data) * 6 // 10])  # truncated
    rng = np.random.default_rng(0)
    (normal / "IM-9102-0001.jpeg").write_bytes(rng.integers(0, 256, 5000, np.uint8).tobytes())
    (normal / "IM-9103-0001.jpeg").write_bytes(b"")
    (normal / "IM-9104-0001.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really a png")
    (normal / "IM-9105-0001.jpeg").write_bytes(data[:300])  # header only

    records = scan(subset)
    report = audit_dataset(records, workers=1, progress=False, cache_dir=tmp_path / "cache")
    reasons = {Path(c["path"]).name: c["reason"] for c in report.corrupt}
    assert set(reasons) == {
        "IM-9101-0001.jpeg",
        "IM-9102-0001.jpeg",
        "IM-9103-0001.jpeg",
        "IM-9104-0001.png",
        "IM-9105-0001.jpeg",
    }
    assert "truncated" in reasons["IM-9101-0001.jpeg"]
    assert "unrecognised" in reasons["IM-9102-0001.jpeg"]
    assert "empty" in reasons["IM-9103-0001.jpeg"]
    assert report.stats()["NORMAL"]["n"] == PER_CLASS  # corrupt rows stay out of statistics
    assert all(all(Path(p).stat().st_size > 1000 for p in c) for c in report.linked_clusters())
    assert "corrupt/unreadable: 5" in report.summary()
    json.dumps(report.to_json(include_rows=True), allow_nan=False)


def test_16_bit_png_is_read_at_full_depth(subset, tmp_path):
    src = _first(subset, "NORMAL", 2)
    g8 = cv2.imread(str(src), cv2.IMREAD_GRAYSCALE)
    g16 = g8.astype(np.uint16) * 257  # same picture, 16-bit range
    out = subset / "train" / "NORMAL" / "IM-9201-0001.png"
    assert cv2.imwrite(str(out), g16)
    assert decode(out.read_bytes()).pixels.dtype == np.uint16

    report = audit_dataset(scan(subset), workers=1, progress=False, cache_dir=None)
    row, ref = _row(report, out), _row(report, src)
    assert row.ok, row.error
    assert (row.bit_depth, row.channels, row.format) == (16, 1, "png")
    assert (row.width, row.height) == (g8.shape[1], g8.shape[0])
    assert row.mean == pytest.approx(g8.mean() / 255, abs=1e-3)
    assert abs(row.mean - ref.mean) < 0.01
    assert {str(src), str(out)} in [set(c) for c in report.near_duplicates]


def test_cross_split_against_source_folders(subset, data_dir, tmp_path):
    # Same patient in train and val: a fresh image renamed to a train patient's id.
    train_img = _first(subset, "NORMAL", 3)
    patient, _ = patient_and_subtype(train_img.name, 0)  # e.g. IM-0115
    val_normal = subset / "val" / "NORMAL"
    val_normal.mkdir(parents=True)
    shutil.copy(spare_image(data_dir, subset, "NORMAL"), val_normal / f"{patient}-0099.jpeg")
    # Same bytes in train and val under another patient's name.
    dup_src = _first(subset, "PNEUMONIA", 4)
    (subset / "val" / "PNEUMONIA").mkdir(parents=True)
    dup = subset / "val" / "PNEUMONIA" / "person9301_virus_1.jpeg"
    shutil.copy(dup_src, dup)

    records = scan(subset)
    report = audit_dataset(records, workers=1, progress=False, cache_dir=None)
    source = report.cross_split()["source"]
    pats = {p["patient"]: p["splits"] for p in source["patients"]}
    assert pats == {patient: ["train", "val"]}
    assert any(
        d["kind"] == "exact" and d["files"] == {str(dup_src): "train", str(dup): "val"}
        for d in source["duplicates"]
    )

    plan = make_splits(records, linked=report.linked_clusters())
    assert report.cross_split(plan)["plan"] == {"patients": [], "duplicates": []}
    assert any("dropped" in n for n in plan.notes)
    assert "across plan splits: 0 patients, 0 duplicate clusters" in report.summary(plan)


def test_full_resolution_original_matches_its_224px_copy(subset, data_dir, samples_dir):
    """Real near duplicates: a Kaggle original vs the stretched 224-px copy in shared/data."""
    name = "IM-0117-0001.jpeg"
    small = subset / "train" / "NORMAL" / name
    shutil.copy(data_dir / "train" / "NORMAL" / name, small)
    (subset / "val" / "NORMAL").mkdir(parents=True)
    big = subset / "val" / "NORMAL" / "IM-9117-0001.jpeg"  # renamed: a new "patient"
    shutil.copy(samples_dir / "kermany_full_res" / "train" / "NORMAL" / name, big)

    records = scan(subset)
    report = audit_dataset(records, workers=1, progress=False, cache_dir=None)
    assert (_row(report, big).width, _row(report, small).width) == (1422, 224)
    assert {str(small), str(big)} in [set(c) for c in report.near_duplicates]
    crossing = report.cross_split()["source"]["duplicates"]
    assert [d["kind"] for d in crossing] == ["near"]
    plan = make_splits(report.readable_records(), linked=report.linked_clusters())
    assert report.cross_split(plan)["plan"]["duplicates"] == []
    assert str(small) not in {r.path for r in plan.of("train")}


def test_rerun_comes_from_cache_and_rereads_changed_files(subset, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    records = scan(subset)
    first = audit_dataset(records, workers=1, progress=False, cache_dir=cache)
    assert first.from_cache == 0 and any(cache.iterdir())

    def no_reads(path):
        raise AssertionError(f"re-read {path}")

    monkeypatch.setattr(audit_mod, "audit_file", no_reads)
    second = audit_dataset(records, workers=1, progress=False, cache_dir=cache)
    assert second.from_cache == len(records)
    assert [r.sha256 for r in second.rows] == [r.sha256 for r in first.rows]
    assert second.exact_duplicates == first.exact_duplicates

    monkeypatch.undo()
    changed = Path(records[0].path)
    st = changed.stat()
    os.utime(changed, ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))
    third = audit_dataset(records, workers=1, progress=False, cache_dir=cache)
    assert third.from_cache == len(records) - 1


def test_hamming_pairs_match_brute_force():
    rng = random.Random(1)
    hexes = [f"{rng.getrandbits(PHASH_BITS):0{PHASH_BITS // 4}x}" for _ in range(300)]
    for k in range(0, 40):  # near copies with a few flipped bits
        v = int(hexes[k], 16)
        for bit in rng.sample(range(PHASH_BITS), rng.randint(0, 30)):
            v ^= 1 << bit
        hexes.append(f"{v:0{PHASH_BITS // 4}x}")
    ints = [int(h, 16) for h in hexes]
    want = {
        (i, j, (ints[i] ^ ints[j]).bit_count())
        for i in range(len(ints))
        for j in range(i + 1, len(ints))
        if (ints[i] ^ ints[j]).bit_count() <= 20
    }
    assert set(_hamming_pairs(_pack(hexes), 20, block=64)) == want
    assert len(want) > 10
