"""Save and load the winner: the seam between the study and everything that serves it.

``results/<study>/winner/`` is a TensorFlow SavedModel (input: float32
``(N, S, S, 1)`` from :func:`study.data.preprocess.load_for_model`; output:
``(N, 1)`` probability of PNEUMONIA). ``winner.json`` beside it (and a copy
inside it) carries the preprocessing config, so whatever loads the model also
preprocesses the way it was trained. Loading needs TensorFlow and this
module only; Keras-Tuner is never imported.

Two optional winner.json entries change what a loaded winner answers (a winner without
them behaves exactly as before):

* ``"calibration": {"temperature": T, ...}``: :meth:`Winner.predict_batch` returns the
  temperature-scaled probability sigmoid(logit(p) / T). The ``threshold`` and the refer
  band are then on that calibrated scale (they were chosen on calibrated probabilities).
* ``"refer_band": {"low": .., "high": .., "coverage_target": ..}``: :meth:`Winner.label_for`
  answers ``"UNCERTAIN"`` (refer to a radiologist) for a probability inside [low, high]
  (see :mod:`study.select.conformal`).
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from study.data.preprocess import PreprocessConfig, load_for_model, model_input
from study.select.calibration import apply_temperature
from study.select.conformal import ReferBand

INFO_NAME = "winner.json"
#: The label of a probability inside the refer band.
UNCERTAIN = "UNCERTAIN"


def export_winner(model: Any, info: dict[str, Any], study_dir: Path) -> Path:
    """Write winner/ (SavedModel), winner.keras and winner.json; returns the SavedModel dir."""
    study_dir = Path(study_dir)
    saved = study_dir / "winner"
    if saved.exists():
        shutil.rmtree(saved)
    model.export(str(saved), format="tf_saved_model", verbose=False)
    model.save(study_dir / "winner.keras")
    text = json.dumps(info, indent=1, default=_json_default)
    (study_dir / INFO_NAME).write_text(text)
    (saved / INFO_NAME).write_text(text)
    return saved


def copy_export(src_dir: Path, dst_dir: Path) -> Path:
    """Copy an export_winner() output (winner/, winner.keras, winner.json) to dst_dir."""
    src_dir, dst_dir = Path(src_dir), Path(dst_dir)
    saved = dst_dir / "winner"
    if saved.exists():
        shutil.rmtree(saved)
    shutil.copytree(src_dir / "winner", saved)
    for name in ("winner.keras", INFO_NAME):
        shutil.copy2(src_dir / name, dst_dir / name)
    return saved


def _json_default(o: Any) -> Any:
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o)}")


def read_info(model_path: Path) -> dict[str, Any]:
    """winner.json inside the SavedModel dir, else beside it."""
    model_path = Path(model_path)
    for cand in (model_path / INFO_NAME, model_path.parent / INFO_NAME):
        if cand.is_file():
            return json.loads(cand.read_text())
    raise FileNotFoundError(f"no {INFO_NAME} in or beside {model_path}")


@dataclass
class Winner:
    """A loaded winner: call :meth:`predict_bytes` or :meth:`predict_batch`."""

    path: Path
    info: dict[str, Any]
    _loaded: Any = field(repr=False)  # keeps the SavedModel's variables alive
    _keras: Any = field(default=None, repr=False)

    @property
    def preprocess(self) -> PreprocessConfig:
        return PreprocessConfig.from_dict(self.info["preprocess"])

    @property
    def threshold(self) -> float:
        return float(self.info["threshold"])

    @property
    def class_names(self) -> list[str]:
        return list(self.info.get("class_names", ["NORMAL", "PNEUMONIA"]))

    @property
    def temperature(self) -> float | None:
        """The calibration temperature, or None when winner.json has none (raw probabilities)."""
        cal = self.info.get("calibration") or {}
        return None if cal.get("temperature") is None else float(cal["temperature"])

    @property
    def refer_band(self) -> ReferBand | None:
        """The band labelled UNCERTAIN, or None when winner.json has none (always decide)."""
        band = self.info.get("refer_band")
        return None if band is None else ReferBand.from_dict(band)

    @property
    def name(self) -> str:
        return str(self.info.get("study", self.path.parent.name))

    @property
    def version(self) -> str:
        return str(self.info.get("version", self.info.get("data_fingerprint", "unknown"))[:12])

    def predict_batch(self, batch: np.ndarray) -> np.ndarray:
        """Probabilities of PNEUMONIA for float32 (N, S, S, 1) inputs, calibrated if T is set."""
        import tensorflow as tf

        serve = getattr(self._loaded, "serve", None) or self._loaded.signatures["serving_default"]
        out = serve(tf.constant(np.asarray(batch, np.float32)))
        if isinstance(out, dict):
            out = next(iter(out.values()))
        p = np.asarray(out, np.float64).reshape(-1)
        return p if self.temperature is None else apply_temperature(p, self.temperature)

    def prepare(self, data: bytes) -> np.ndarray:
        """The shared preprocessing with this model's own config."""
        return load_for_model(data, self.preprocess)

    def prepare_pixels(self, pixels: np.ndarray) -> np.ndarray:
        """The same preprocessing on pixels that were already decoded (e.g. by the gate)."""
        return model_input(pixels, self.preprocess)

    def predict_bytes(self, data: bytes) -> float:
        return float(self.predict_batch(self.prepare(data)[None])[0])

    def label_for(self, probability: float) -> str:
        """UNCERTAIN inside the refer band, else the class the threshold decides."""
        band = self.refer_band
        if band is not None and bool(band.contains(probability)):
            return UNCERTAIN
        return self.class_names[int(probability >= self.threshold)]

    def keras_model(self) -> Any:
        """The Keras model (for Grad-CAM, which needs gradients); loaded on first use."""
        if self._keras is None:
            import keras

            import study.models.layers  # noqa: F401  (registers custom layers for deserialisation)

            self._keras = keras.saving.load_model(self.path.parent / "winner.keras", compile=False)
        return self._keras


def load_winner(model_path: Path) -> Winner:
    """Load a SavedModel written by :func:`export_winner`."""
    import tensorflow as tf

    model_path = Path(model_path)
    if not (model_path / "saved_model.pb").is_file():
        raise FileNotFoundError(f"{model_path} is not a SavedModel directory (no saved_model.pb)")
    info = read_info(model_path)
    return Winner(model_path, info, tf.saved_model.load(str(model_path)))


def newest_winner(results_dir: Path) -> Path | None:
    """The most recently written results/*/winner, the service's default MODEL_PATH."""
    cands = [p for p in Path(results_dir).glob("*/winner") if (p / "saved_model.pb").is_file()]
    return max(cands, key=lambda p: (p / "saved_model.pb").stat().st_mtime, default=None)
