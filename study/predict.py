"""`python -m study.predict --model results/<study>/winner FILE...`: one JSON line per file.

Needs TensorFlow and the project's preprocessing only (no Keras-Tuner), and
preprocesses with the config stored in the model's winner.json. ``label`` is NORMAL or
PNEUMONIA, or UNCERTAIN (refer to a radiologist) when winner.json has a refer band and
the probability falls inside it; ``probability_pneumonia`` is temperature-scaled when
winner.json has a temperature (see :mod:`study.select.model_io`).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from study.data.preprocess import ImageDecodeError
from study.select.model_io import load_winner


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m study.predict", description=__doc__)
    p.add_argument("--model", type=Path, required=True, help="SavedModel dir (results/<s>/winner)")
    p.add_argument("files", nargs="+", type=Path, help="JPEG, PNG or DICOM files")
    args = p.parse_args(argv)
    winner = load_winner(args.model)
    failed = 0
    for f in args.files:
        try:
            prob = winner.predict_bytes(f.read_bytes())
        except (OSError, ImageDecodeError) as exc:
            failed += 1
            print(json.dumps({"file": str(f), "error": str(exc)}), flush=True)
            continue
        print(
            json.dumps(
                {
                    "file": str(f),
                    "probability_pneumonia": prob,
                    "label": winner.label_for(prob),
                    "threshold": winner.threshold,
                }
            ),
            flush=True,
        )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
