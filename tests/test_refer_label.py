"""The "refer instead of guess" label end to end: Winner, predict, evaluate, the service."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from study import evaluate as evaluate_mod
from study import predict as predict_mod
from study.select.calibration import apply_temperature
from study.select.model_io import UNCERTAIN, Winner, copy_export, load_winner
from tests.service_support import make_tiny_winner

BAND = {"low": 0.3, "high": 0.7, "coverage_target": 0.95, "n_calibration": 100, "q": 0.7}


def _winner(**extra: Any) -> Winner:
    info = {"threshold": 0.4, "class_names": ["NORMAL", "PNEUMONIA"], **extra}
    return Winner(Path("/nowhere/winner"), info, None)


def test_band_labels_inside_uncertain_and_outside_by_threshold() -> None:
    w = _winner(refer_band=BAND)
    assert [w.label_for(p) for p in (0.1, 0.3, 0.5, 0.7, 0.71, 0.29)] == [
        "NORMAL",
        UNCERTAIN,
        UNCERTAIN,
        UNCERTAIN,
        "PNEUMONIA",
        "NORMAL",
    ]
    assert w.refer_band is not None and w.refer_band.coverage_target == 0.95


def test_old_winner_and_empty_band_keep_the_threshold_decision() -> None:
    for w in (_winner(), _winner(refer_band={**BAND, "low": None, "high": None, "q": 0.2})):
        assert [w.label_for(p) for p in (0.39, 0.4, 0.5)] == ["NORMAL", "PNEUMONIA", "PNEUMONIA"]
    assert _winner().refer_band is None and _winner().temperature is None


def _rewrite_info(saved: Path, **extra: Any) -> None:
    for path in (saved / "winner.json", saved.parent / "winner.json"):
        info = json.loads(path.read_text())
        info.update(extra)
        path.write_text(json.dumps(info))


@pytest.fixture(scope="module")
def tiny_saved(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_winner(tmp_path_factory.mktemp("refer_tiny"))


@pytest.fixture(scope="module")
def val_files(samples_dir: Path) -> list[Path]:
    return sorted((samples_dir / "kermany_full_res" / "val").glob("*/*.jpeg"))


@pytest.fixture(scope="module")
def raw_probs(tiny_saved: Path, val_files: list[Path]) -> np.ndarray:
    w = load_winner(tiny_saved)
    return np.array([w.predict_bytes(f.read_bytes()) for f in val_files])


def _banded_copy(tiny_saved: Path, tmp_path: Path, raw: np.ndarray, temperature: float) -> Path:
    """A copy of the tiny winner whose band holds the upper half of its calibrated probs."""
    saved = copy_export(tiny_saved.parent, tmp_path)
    cal = np.sort(apply_temperature(raw, temperature))
    low = float((cal[len(cal) // 2 - 1] + cal[len(cal) // 2]) / 2)
    band = {**BAND, "low": low, "high": 1.0}
    _rewrite_info(saved, refer_band=band, calibration={"temperature": temperature})
    return saved


def test_predict_prints_uncertain_inside_the_band(
    tiny_saved: Path, val_files: list[Path], raw_probs: np.ndarray, tmp_path: Path, capsys
) -> None:
    saved = _banded_copy(tiny_saved, tmp_path, raw_probs, 0.5)
    assert predict_mod.main(["--model", str(saved), *map(str, val_files)]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert all(set(r) == {"file", "probability_pneumonia", "label", "threshold"} for r in rows)
    got = np.array([r["probability_pneumonia"] for r in rows])
    np.testing.assert_allclose(got, apply_temperature(raw_probs, 0.5), atol=1e-6)
    low = json.loads((saved / "winner.json").read_text())["refer_band"]["low"]
    labels = [r["label"] for r in rows]
    assert labels == [UNCERTAIN if p >= low else "NORMAL" if p < 0.5 else "PNEUMONIA" for p in got]
    assert labels.count(UNCERTAIN) == len(rows) // 2


def test_evaluate_reports_uncertain_rate_and_ece(
    tiny_saved: Path, samples_dir: Path, raw_probs: np.ndarray, tmp_path: Path
) -> None:
    data = samples_dir / "kermany_full_res"
    plain = evaluate_mod.evaluate(tiny_saved, data, "val")
    assert plain["uncertain_rate"] == 0.0 and plain["accuracy_decided"] == plain["accuracy"]
    saved = _banded_copy(tiny_saved, tmp_path, raw_probs, 0.5)
    out = evaluate_mod.evaluate(saved, data, "val")
    assert set(evaluate_mod.KEYS) <= set(out) and out["n"] == len(raw_probs)
    assert out["uncertain_rate"] == pytest.approx(0.5)
    y = np.array([int("PNEUMONIA" in str(f)) for f in sorted((data / "val").glob("*/*.jpeg"))])
    p = apply_temperature(raw_probs, 0.5)
    decided = p < json.loads((saved / "winner.json").read_text())["refer_band"]["low"]
    assert out["accuracy_decided"] == pytest.approx(np.mean((p[decided] >= 0.5) == y[decided]))
    assert out["accuracy"] == pytest.approx(np.mean((p >= 0.5) == y))
    assert 0.0 <= out["ece"] <= 1.0 and out["ece"] != plain["ece"]


def test_worker_runtime_answers_uncertain(
    tiny_saved: Path, val_files: list[Path], raw_probs: np.ndarray, tmp_path: Path
) -> None:
    from service.inference import ModelRuntime

    saved = _banded_copy(tiny_saved, tmp_path, raw_probs, 0.5)
    runtime = ModelRuntime(saved)
    low = runtime.winner.refer_band.low
    labels = []
    for f in val_files:
        out = runtime.run(f.read_bytes(), None)
        p = out.probability
        assert out.label == (UNCERTAIN if p >= low else "NORMAL" if p < 0.5 else "PNEUMONIA")
        labels.append(out.label)
    assert labels.count(UNCERTAIN) == len(val_files) // 2
