"""Patient ids, patient-grouped splits and duplicate clusters."""

from __future__ import annotations

from pathlib import Path

import pytest

from study.data.records import check_no_leakage, make_splits, patient_and_subtype, scan


@pytest.mark.parametrize(
    "name,label,patient,subtype",
    [
        ("person1946_bacteria_4874.jpeg", 1, "person1946", "bacteria"),
        ("person1000_virus_1681.jpeg", 1, "person1000", "virus"),
        ("IM-0117-0001.jpeg", 0, "IM-0117", "normal"),
        ("NORMAL2-IM-1427-0001.jpeg", 0, "NORMAL2-IM-1427", "normal"),
        ("upload.png", 1, "file:upload.png", "unknown"),
    ],
)
def test_patient_from_file_name(name: str, label: int, patient: str, subtype: str) -> None:
    assert patient_and_subtype(name, label) == (patient, subtype)


def test_full_train_split_is_patient_grouped_and_seeded(data_dir: Path) -> None:
    records = scan(data_dir)
    assert len(records) == 5216
    plan = make_splits(records, seed=42)
    check_no_leakage(plan)
    sizes = plan.sizes()
    assert sizes["val"]["total"] / 5216 == pytest.approx(0.12, abs=0.03)
    assert sizes["test"]["total"] / 5216 == pytest.approx(0.15, abs=0.03)
    assert plan.test_source == "carved from train"
    for s in ("train", "val", "test"):  # stratified: the class ratio holds in every split
        assert sizes[s]["PNEUMONIA"] / sizes[s]["total"] == pytest.approx(0.743, abs=0.04)
    again = make_splits(records, seed=42)
    assert [r.split for r in again.records] == [r.split for r in plan.records]
    patients = {s: {r.patient for r in plan.of(s)} for s in ("train", "val", "test")}
    assert not (patients["train"] & patients["val"]) and not (patients["train"] & patients["test"])


def test_duplicate_cluster_across_patients_stays_in_one_split(data_dir: Path) -> None:
    records = scan(data_dir)
    a = next(r for r in records if r.patient == "person1000")
    others = [r for r in records if r.label == 1 and r.patient != "person1000"]
    linked = [[a.path, o.path] for o in others[:: len(others) // 40]]
    plan = make_splits(records, linked=linked, seed=1)
    check_no_leakage(plan, linked)
    split_of = {r.path: r.split for r in plan.records}
    assert len({split_of[p] for pair in linked for p in pair}) == 1


def test_official_val_and_test_are_respected(tmp_path: Path, data_dir: Path) -> None:
    import shutil

    src = scan(data_dir)
    for split, recs in (
        ("train", src[:60] + src[-60:]),
        ("val", src[60:64]),
        ("test", src[64:70] + src[-70:-60]),
    ):
        for r in recs:
            d = tmp_path / split / r.class_name
            d.mkdir(parents=True, exist_ok=True)
            shutil.copy(r.path, d)
    plan = make_splits(scan(tmp_path), seed=0)
    assert plan.test_source == "official"
    assert {r.source_split for r in plan.of("test")} == {"test"}
    assert all(r.split == "val" for r in plan.records if r.source_split == "val")
    check_no_leakage(plan)
