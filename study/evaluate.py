"""`python -m study.evaluate --model DIR --data-dir DIR [--split NAME]`: metrics as JSON.

Works on any folder in the Kaggle layout; uses the model's own threshold
and preprocessing (from winner.json), so nothing is tuned on what it scores.

With a refer band in winner.json some images are labelled UNCERTAIN. Accuracy,
sensitivity, specificity, ... are still computed on the threshold decision for *every*
image, as without a band, so numbers stay comparable across winners; ``uncertain_rate``
is the share of images inside the band and ``accuracy_decided`` the accuracy on the
others (None when every image is referred). ``ece`` is the expected calibration error
of the probabilities scored (temperature-scaled when winner.json has a temperature).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from study.data import records as data_mod
from study.select.calibration import ece
from study.select.model_io import Winner, load_winner
from study.select.stats import binary_metrics

BATCH_SIZE = 32
KEYS = (
    "n",
    "accuracy",
    "auc",
    "sensitivity",
    "specificity",
    "precision",
    "f1",
    "threshold",
    "confusion",
)


def evaluate(model_path: Path, data_dir: Path, split: str | None) -> dict:
    winner = load_winner(model_path)
    records = data_mod.scan(data_dir, require_train=False)
    splits = sorted({r.source_split for r in records})
    chosen = split or ("test" if "test" in splits else None)
    if chosen is not None:
        records = [r for r in records if r.source_split == chosen]
    if not records:
        raise SystemExit(f"no images for split {chosen!r} in {data_dir} (found {splits})")
    probs, labels, failed = [], [], []
    for i in range(0, len(records), BATCH_SIZE):
        batch, ys = [], []
        for r in records[i : i + BATCH_SIZE]:
            try:
                batch.append(winner.prepare(Path(r.path).read_bytes()))
                ys.append(r.label)
            except Exception as exc:  # listed, never a crash
                failed.append({"file": r.path, "error": str(exc)})
        if batch:
            probs.append(winner.predict_batch(np.stack(batch)))
            labels += ys
    if not probs:
        raise SystemExit(f"error: no readable image in {data_dir} ({len(failed)} unreadable)")
    y, p = np.array(labels), np.concatenate(probs)
    m = binary_metrics(y, p, winner.threshold)
    out = {k: m[k] for k in KEYS if k in m}
    out["n"] = len(labels)
    out["threshold"] = winner.threshold
    out["split"] = chosen or "all"
    out.update(referral(winner, y, p))
    if failed:
        out["unreadable"] = failed
    return out


def referral(winner: Winner, y: np.ndarray, p: np.ndarray) -> dict:
    """uncertain_rate, accuracy_decided (outside the band) and ece (see the module doc)."""
    band = winner.refer_band
    inside = np.zeros(p.shape, bool) if band is None else band.contains(p)
    decided = ~inside
    correct = (p >= winner.threshold).astype(int) == y
    return {
        "uncertain_rate": float(inside.mean()),
        "accuracy_decided": float(correct[decided].mean()) if decided.any() else None,
        "ece": ece(y, p),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m study.evaluate", description=__doc__)
    p.add_argument("--model", type=Path, required=True)
    p.add_argument("--data-dir", type=Path, required=True)
    p.add_argument(
        "--split",
        default=None,
        help="train, val or test (default: test if present, else every image)",
    )
    args = p.parse_args(argv)
    print(json.dumps(evaluate(args.model, args.data_dir, args.split)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
