"""The benchmarks behind the README's numbers run, write what the README and the study
read (load average, every family and point, a verdict per family), and ``--precision
auto`` follows the precision table. Tiny settings: this checks the plumbing, not speed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks import precision_bench
from benchmarks.readme import README, blocks, render
from search_spaces import (
    FALLBACK_PRECISION,
    FAMILY_NAMES,
    PRECISION_TABLE,
    dtype_policy,
    measured_precision,
)


def _check_machine(doc: dict) -> None:
    m = doc["machine"]
    assert m["cpus"] >= 1
    assert len(m["load_average_start"]) == 3 and len(m["load_average_end"]) == 3


def _fake_time_point(family: str, values: dict, policy: str, *args: object) -> dict:
    """bf16 twice as fast for resnet only, so the verdicts must differ by family."""
    fast = family == "resnet" and policy == precision_bench.BF16
    return {"params": 10, "trainable": 5, "s_per_step": 0.1 if fast else 0.2}


def test_precision_table_covers_every_family_and_point(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(precision_bench, "time_point", _fake_time_point)
    monkeypatch.setattr("benchmarks.random_weights.random_weights", lambda *a: None)
    js = precision_bench.run(list(FAMILY_NAMES), 32, 1, 0, tmp_path)
    doc = json.loads(js.read_text())
    _check_machine(doc)
    for fam in FAMILY_NAMES:
        points = [r["point"] for r in doc["rows"] if r["family"] == fam]
        assert points == list(precision_bench.POINTS[fam]) and len(points) == 3
    assert doc["verdicts"]["resnet"]["precision"] == "mixed_bfloat16"
    assert doc["verdicts"]["custom_cnn"]["precision"] == "float32"
    assert {fam: measured_precision(fam, js) for fam in FAMILY_NAMES} == {
        fam: v["precision"] for fam, v in doc["verdicts"].items()
    }
    md = (tmp_path / "precision.md").read_text()
    assert md.startswith("_") and "load average" in md and "geomean_speedup_bf16" in md


def test_every_point_is_in_its_search_space() -> None:
    from search_spaces import hypermodel_class
    from study.models.weights import WeightsSource

    archs = {"resnet": "ResNet50V2", "efficientnet": "EfficientNetLite0"}
    for fam, points in precision_bench.POINTS.items():
        w = WeightsSource(fam, True, "local-file", Path("unused.h5"), archs.get(fam))
        hm = hypermodel_class(fam)(image_size=32, seed=0, weights=w)
        for values in points.values():
            assert precision_bench.point_hp(hm, values).values.items() >= values.items()
    with pytest.raises(ValueError, match="outside its space"):
        precision_bench.point_hp(hm, {"fine_tune_blocks": 2})


def test_precision_bench_runs_for_real(tmp_path: Path) -> None:
    """A real (tiny) run: the hypermodel built at a search point, timed in both precisions."""
    js = precision_bench.run(["custom_cnn"], 32, 1, 0, tmp_path, points=1)
    doc = json.loads(js.read_text())
    _check_machine(doc)
    (row,) = doc["rows"]
    assert row["point"] == next(iter(precision_bench.POINTS["custom_cnn"]))
    assert row["float32_s_per_step"] > 0 and row["bf16_s_per_step"] > 0
    assert doc["verdicts"]["custom_cnn"]["precision"] in ("float32", "mixed_bfloat16")


@pytest.mark.parametrize("family", ["resnet", "efficientnet"])
def test_random_weights_build_the_transfer_families(tmp_path: Path, family: str) -> None:
    """No ImageNet file needed: the real hypermodel builds from a random-init weights file."""
    from benchmarks.random_weights import random_weights
    from search_spaces import hypermodel_class
    from study.models.offline_weights import weights_filename
    from study.models.weights import resolve_imagenet_weights

    w = random_weights(family, tmp_path, 32)
    if family == "resnet":  # the exact file name the study looks for
        assert resolve_imagenet_weights(family, tmp_path).path == w.path
    else:  # Lite0: the converter's file name (the study also wants its checksum sidecar)
        assert w.path == tmp_path / weights_filename("lite0")
    values = next(iter(precision_bench.POINTS[family].values()))
    hm = hypermodel_class(family)(image_size=32, seed=0, weights=w, precision="mixed_bfloat16")
    model = hm.build(precision_bench.point_hp(hm, values))
    assert model.count_params() > 1_000_000  # the whole backbone, loaded from the file


def test_pipeline_against_training(tmp_path: Path, data_dir: Path) -> None:
    from benchmarks.pipeline_bench import run

    run(data_dir, 32, tmp_path, batches=2, steps=2, limit=48)
    stages = json.loads((tmp_path / "pipeline.json").read_text())
    demand = json.loads((tmp_path / "pipeline_demand.json").read_text())
    _check_machine(stages)
    _check_machine(demand)
    assert stages["rows"][0]["stage"].startswith("cache build (48 images")
    assert len(demand["rows"]) == 3 and all(r["images_per_s"] > 0 for r in demand["rows"])
    assert isinstance(demand["pipeline_is_bottleneck"], bool)
    assert demand["policy"] == dtype_policy("custom_cnn", "auto")


def test_auto_precision_follows_the_committed_table() -> None:
    verdicts = (
        json.loads(PRECISION_TABLE.read_text())["verdicts"] if PRECISION_TABLE.is_file() else {}
    )
    for fam in FAMILY_NAMES:
        want = verdicts.get(fam, {}).get("precision", FALLBACK_PRECISION)
        assert dtype_policy(fam, "auto") == want


def test_missing_or_bad_table_falls_back_to_float32(tmp_path: Path) -> None:
    assert measured_precision("resnet", tmp_path / "none.json") == "float32"
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"verdicts": {"resnet": {"precision": "float16"}}}))
    assert measured_precision("resnet", bad) == "float32"
    bad.write_text("{not json")
    assert measured_precision("resnet", bad) == "float32"


def test_readme_tables_are_the_last_results(tmp_path: Path) -> None:
    text = README.read_text()
    assert blocks(text) == [
        "study_table",
        "precision",
        "pipeline",
        "pipeline_demand",
        "training",
        "load",
        "gate_table",
        "gate_latency",
    ]
    assert render(text) == text, "README tables differ from benchmarks/results: make benchmark"
    (tmp_path / "pipeline.md").write_text("| a |\n|---|\n| 1 |\n")
    assert "| 1 |" in render(text, tmp_path) and "not measured yet" in render(text, tmp_path)
