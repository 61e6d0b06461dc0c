"""The comparison report: renders from a tiny study, regenerates from artifacts, compares families.

The tiny study (conftest ``tiny_study``) has one family, so the two-family
statistics are exercised on a copy with a second, faked family whose
predictions are derived from the real ones.
"""

from __future__ import annotations

import csv
import html
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from study.report.page import build_context, render, write_report
from study.search.trial_log import load_trials
from study.select import stats
from study.select.stats import holm as _holm
from study.select.winner import winning_trial

REPO = Path(__file__).resolve().parents[1]
SECTIONS = ("data", "leaderboard", "families", "statistics", "winner", "errors")

pytestmark = pytest.mark.slow


def _copy_study(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("tuner"))
    return dst


def _snapshot(root: Path) -> dict[str, tuple[int, int]]:
    """(size, mtime) of every artifact a training run would touch."""
    files = [*root.glob("trials/**/*"), *root.glob("families/**/*"), *root.glob("winner*")]
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) for p in files}


def test_report_has_every_section(tiny_study: Path) -> None:
    report = tiny_study / "report.html"
    assert report.is_file(), "the runner should write report.html at the end of a study"
    text = report.read_text()
    for sid in SECTIONS:
        assert f'<section id="{sid}">' in text, sid
    # Self-contained: every image is inline, nothing is fetched from the network.
    srcs = re.findall(r'<(?:img|script|link)[^>]*?(?:src|href)="([^"]*)"', text)
    assert srcs and all(s.startswith("data:") for s in srcs), [s[:40] for s in srcs]
    assert "<script src" not in text
    # One family: the statistics section says there is nothing to compare.
    assert "nothing to compare" in text
    # Every finished trial is on the leaderboard, with a curve.
    trials = sorted(p.parent.name for p in (tiny_study / "trials").glob("*/trial.json"))
    for t in trials:
        assert f">{t}</a>" in text and f'id="curve-{t}"' in text
    # Honest about where the test split came from.
    splits = json.loads((tiny_study / "splits.json").read_text())
    if splits["test_source"] == "carved from train":
        assert "<b>The test split was carved from the training folder" in text
    assert "never to select a model, a threshold, a temperature or a refer band" in text
    # Every error of the winner is in the gallery (a tiny test split is far below the cap).
    conf = json.loads((tiny_study / "winner.json").read_text())["test"]["confusion"]
    assert f"pneumonia called normal ({conf['fn']})" in text
    assert f"normal called pneumonia ({conf['fp']})" in text
    assert text.count('alt="Grad-CAM ') == conf["fn"] + conf["fp"]


def test_cli_regenerates_the_report_without_training(tiny_study: Path, tmp_path: Path) -> None:
    study = _copy_study(tiny_study, tmp_path / "study")
    (study / "report.html").unlink()
    before = _snapshot(study)
    proc = subprocess.run(
        [sys.executable, str(REPO / "run_study.py"), "report", "--study", str(study)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert (study / "report.html").is_file()
    assert proc.stdout.strip().endswith("report.html")
    assert _snapshot(study) == before, "regenerating the report must not touch trials or models"
    assert "epoch" not in proc.stdout and "trial 1/" not in proc.stdout
    assert '<section id="errors">' in (study / "report.html").read_text()


def _fake_family(study: Path, name: str, seed: int = 1) -> None:
    """A second family: the real family's probabilities plus noise, with its own threshold."""
    summary = json.loads((study / "summary.json").read_text())
    real = next(iter(summary["families"]))
    rng = np.random.default_rng(seed)
    out: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for split in ("val", "test"):
        src = study / "families" / real / f"{split}_predictions.csv"
        rows = list(csv.DictReader(src.open()))
        dst = study / "families" / name / f"{split}_predictions.csv"
        dst.parent.mkdir(parents=True, exist_ok=True)
        y, p = [], []
        with dst.open("w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["file", "patient", "subtype", "label", "probability_pneumonia"])
            for r in rows:
                q = float(np.clip(float(r["probability_pneumonia"]) + rng.normal(0, 0.2), 0, 1))
                w.writerow([r["file"], r["patient"], r["subtype"], r["label"], f"{q:.6f}"])
                y.append(int(r["label"]))
                p.append(q)
        out[split] = (np.array(y), np.array(p))
    thr, rule = stats.choose_threshold(*out["val"], 0.95)
    summary["families"][name] = {
        "trial": f"{name}-0",
        "threshold": thr,
        "threshold_rule": rule,
        "val": stats.binary_metrics(*out["val"], thr),
        "test": stats.binary_metrics(*out["test"], thr),
        "weights": "none (faked in a test)",
    }
    (study / "summary.json").write_text(json.dumps(summary))


def test_two_families_get_paired_tests_and_cis(tiny_study: Path, tmp_path: Path) -> None:
    study = _copy_study(tiny_study, tmp_path / "two")
    _fake_family(study, "fake_cnn")
    ctx = build_context(study, include_errors=False)
    cmp = ctx["compare"]
    assert set(cmp["families"]) >= {"custom_cnn", "fake_cnn"}
    kinds = sorted(t["result"]["test"] for t in cmp["tests"])
    assert kinds == ["DeLong", "McNemar"]
    for t in cmp["tests"]:
        assert 0.0 <= t["result"]["p_value"] <= 1.0
        assert t["p_holm"] >= t["result"]["p_value"]
        assert "custom_cnn" in t["verdict"] and "fake_cnn" in t["verdict"]
    cis = [c for c in cmp["cis"] if c["point"] is not None]
    assert {c["family"] for c in cis} == {"custom_cnn", "fake_cnn"}
    for c in cis:
        assert c["lo"] <= c["point"] <= c["hi"]
        assert c["method"].startswith("patient-level")
    page = render(ctx)
    assert "Holm" in page and "nothing to compare" not in page
    for t in cmp["tests"]:
        assert html.escape(t["verdict"]) in page


def test_primary_comparison_resamples_patients(tiny_study: Path, tmp_path: Path) -> None:
    """The clustered bootstrap leads the statistics section and says over how many patients;
    McNemar/DeLong follow, labelled secondary; summary.json gets the same computation."""
    study = _copy_study(tiny_study, tmp_path / "clustered")
    _fake_family(study, "fake_cnn")
    cmp = build_context(study, include_errors=False)["compare"]
    rows = list(csv.DictReader((study / "families" / "fake_cnn" / "test_predictions.csv").open()))
    n_patients = len({r["patient"] for r in rows})
    assert n_patients < len(rows), "the tiny study should have patients with several images"
    assert [t["result"]["metric"] for t in cmp["clustered"]] == ["accuracy", "AUC"]
    for t in cmp["clustered"]:
        r = t["result"]
        assert r["test"] == "patient bootstrap" and r["n_groups"] == n_patients
        assert r["diff_ci"][0] <= r["diff"] <= r["diff_ci"][1]
        assert t["p_holm"] >= r["p_value"] and f"{n_patients} patients resampled" in t["verdict"]
    assert cmp["clustered_info"]["n_patients"] == n_patients
    cross = cmp["clustered"][1]["cross_check"]
    assert cross["test"] == "Obuchowski" and cross["n_groups"] == n_patients
    assert all(t["verdict"].startswith("Per-image (assumes independent") for t in cmp["tests"])
    assert any(f"from {n_patients} patients" in v for v in cmp["verdicts"])
    page = render(build_context(study, include_errors=False))
    primary = page.index('id="clustered-tests"')
    assert primary < page.index("Per-image tests (assumes independent images; secondary)")
    assert f"<b>{n_patients} patients</b>" in page
    for t in cmp["clustered"]:
        assert html.escape(t["verdict"]) in page

    from study.data.datasets import SplitArrays
    from study.data.records import ImageRecord
    from study.select.winner import family_comparisons

    real = next(f for f in cmp["families"] if f != "fake_cnn")
    preds = {
        f: list(csv.DictReader((study / "families" / f / "test_predictions.csv").open()))
        for f in (real, "fake_cnn")
    }
    recs = [
        ImageRecord(r["file"], int(r["label"]), r["patient"], r["subtype"], "test")
        for r in preds[real]
    ]
    split = SplitArrays(recs, np.zeros((len(recs), 1)), np.array([r.label for r in recs]))
    probs = {f: np.array([float(r["probability_pneumonia"]) for r in v]) for f, v in preds.items()}
    summary = json.loads((study / "summary.json").read_text())
    saved = family_comparisons(split, probs, summary["families"])
    json.dumps(saved)
    assert [t["result"]["p_value"] for t in saved["primary"]] == pytest.approx(
        [t["result"]["p_value"] for t in cmp["clustered"]], abs=1e-3
    )
    assert saved["n_patients"] == n_patients


def test_conclusion_follows_the_clustered_tests_not_the_per_image_ones() -> None:
    """Two patients carry A's whole advantage over 60 images: McNemar and DeLong call it
    significant, the patient bootstrap does not, and the conclusion says so."""
    from study.report.page import _overall_verdict
    from study.select.compare import compare_families

    rng = np.random.default_rng(0)
    y = np.repeat(np.r_[np.ones(6), np.zeros(6)].astype(int), 30)
    patient = np.repeat([f"p{i}" for i in range(12)], 30)
    base = np.r_[np.linspace(0.6, 0.9, 6), np.linspace(0.1, 0.4, 6)]
    bad = base.copy()
    bad[0], bad[6] = 0.05, 0.95
    files = [f"img{i}.jpeg" for i in range(y.size)]
    preds = {
        name: {"file": files, "patient": patient, "y": y, "p": np.repeat(s, 30) + noise}
        for name, s, noise in (
            ("good", base, rng.normal(0, 0.005, y.size)),
            ("bad", bad, rng.normal(0, 0.005, y.size)),
        )
    }
    cmp = compare_families(preds, {"good": 0.5, "bad": 0.5})
    assert all(t["significant_holm"] for t in cmp["secondary"])
    assert not any(t["significant"] for t in cmp["primary"])
    assert cmp["n_patients"] == 12 and cmp["n_images"] == 360
    lines = _overall_verdict(cmp, ["good", "bad"])
    assert "per-image tests (McNemar, DeLong) call 2 differences significant" in lines[0]
    assert "from 12 patients; 0 significant" in lines[1]
    assert lines[-1].startswith("No difference between the families")


def _set_val_auc(trial_json: Path, binned: float, exact: float) -> None:
    t = json.loads(trial_json.read_text())
    t["val"] |= {"auc": binned, "auc_exact": exact}
    trial_json.write_text(json.dumps(t))


def test_leaderboard_ranks_by_the_winners_objective(tiny_study: Path, tmp_path: Path) -> None:
    """Binned and exact val AUC disagree in order: the report follows the exact one, as the
    winner choice does, so leaderboard row 1 is the winner."""
    study = _copy_study(tiny_study, tmp_path / "order")
    real = sorted((study / "trials").glob("*/trial.json"))
    for i, p in enumerate(real):  # high binned AUC, low exact AUC
        _set_val_auc(p, binned=0.95 - 0.01 * i, exact=0.60 - 0.01 * i)
    twin_dir = study / "trials" / "twin"
    shutil.copytree(real[0].parent, twin_dir)
    twin = json.loads((twin_dir / "trial.json").read_text())
    twin["trial_id"] = "twin"
    (twin_dir / "trial.json").write_text(json.dumps(twin))
    _set_val_auc(twin_dir / "trial.json", binned=0.75, exact=0.85)  # low binned, high exact

    winner = winning_trial(load_trials(study))
    assert winner["trial_id"] == "twin"
    ctx = build_context(study, include_errors=False)
    rows = ctx["board"]["rows"]
    assert max(rows, key=lambda r: r["auc"])["id"] != rows[0]["id"], "orders must disagree"
    assert rows[0]["rank"] == 1 and rows[0]["id"] == f"{winner['family']}-twin"
    assert [r["objective"] for r in rows] == sorted((r["objective"] for r in rows), reverse=True)
    spread = {r["family"]: r for r in ctx["compare"]["spread"]}
    assert spread[winner["family"]]["best"] == pytest.approx(0.85)
    page = render(ctx)
    assert (
        "Ranked by the study's objective, <b>val_auc</b> (exact ROC-AUC on clean validation)"
        in page
    )
    table = page[page.index('id="leaderboard-table"') :]
    first = re.search(r'<tbody>\s*<tr>.*?<a href="#curve-[^"]*">([^<]+)</a>', table, re.S)
    assert first and first.group(1) == f"{winner['family']}-twin"


def test_interrupted_study_still_renders(tiny_study: Path, tmp_path: Path) -> None:
    """No summary or winner yet: data and trials are shown, the rest says what is missing."""
    study = _copy_study(tiny_study, tmp_path / "cut")
    for name in ("summary.json", "winner.json", "winner.keras"):
        (study / name).unlink()
    shutil.rmtree(study / "families")
    text = write_report(study).read_text()
    assert "did not reach the winner stage" in text
    assert 'id="leaderboard-table"' in text


def test_holm_adjustment() -> None:
    assert _holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert _holm([0.5]) == [0.5]
