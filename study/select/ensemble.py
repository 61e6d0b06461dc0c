"""Ensembles of the best trials: average their probabilities, compete on the same objective.

Averaging a few strong trials' probabilities ranked held-out X-rays better than any one
of them, so after the search the top-k trials (k = 2..5, across families) are averaged
on validation; each average is a candidate next to the single trials, ranked by the one
:func:`study.search.trial_log.objective` (its ``val.auc_exact`` is the exact AUC of the
averaged saved validation probabilities). If one wins, :func:`build_ensemble_model` makes
it ONE Keras model with the members' input, so it exports, loads and serves like any
single model.

Restriction: one model takes one input, so members must share the preprocessing and the
image size. Trials record them (``preprocess``, ``image_size`` in trial.json, from their
input hyperparameters); those that differ from the best trial's are left out.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import keras
import numpy as np

from study.search.trial_log import (
    DEFAULT_OBJECTIVE,
    exact_roc_auc,
    objective,
    read_shift_predictions,
    read_val_predictions,
)

ENSEMBLE_FAMILY = "ensemble"
K_VALUES = (2, 3, 4, 5)


@dataclass(frozen=True)
class Ensemble:
    """The top-k trials and their averaged validation probabilities, aligned by file."""

    members: list[dict[str, Any]]
    paths: list[str]
    labels: np.ndarray
    probs: np.ndarray
    shift_auc: float | None = None  # of the averaged shift-sample probabilities

    @property
    def name(self) -> str:
        return f"ens-top{len(self.members)}"

    def record(self) -> dict[str, Any]:
        """A trial-like dict, so :func:`objective` ranks it together with single trials."""
        return {
            "family": ENSEMBLE_FAMILY,
            "trial_id": self.name,
            "members": [member_name(t) for t in self.members],
            "member_dirs": [t["dir"] for t in self.members],
            "hyperparameters": {member_name(t): t.get("hyperparameters", {}) for t in self.members},
            "val": {
                "auc": binned_auc(self.labels, self.probs),
                "auc_exact": exact_roc_auc(self.labels, self.probs),
            },
            "shift": {"auc_exact": self.shift_auc},
            "preprocess": self.members[0].get("preprocess"),
            "image_size": self.members[0].get("image_size"),
            "params": sum(int(t.get("params") or 0) for t in self.members),
            "seconds": sum(float(t.get("seconds") or 0.0) for t in self.members),
            "dtype_policy": "float32",
        }


def binned_auc(labels: np.ndarray, probs: np.ndarray) -> float:
    """Keras' 200-threshold AUC, the one trials record as ``val.auc``, for the same columns."""
    metric = keras.metrics.AUC(num_thresholds=200)
    metric.update_state(np.asarray(labels, np.float32), np.asarray(probs, np.float32))
    return float(metric.result())


def member_name(trial: dict[str, Any]) -> str:
    return f"{trial['family']}-{trial['trial_id']}"


def is_ensemble(candidate: dict[str, Any]) -> bool:
    return candidate.get("family") == ENSEMBLE_FAMILY


def _input_key(trial: dict[str, Any]) -> str:
    """What decides a model's input: members of one ensemble must agree on it."""
    return json.dumps([trial.get("preprocess"), trial.get("image_size")], sort_keys=True)


def average_predictions(
    members: list[dict[str, Any]], reader: Any = read_val_predictions
) -> tuple[list[str], np.ndarray, np.ndarray]:
    """(files, labels, mean probability) over the members, aligned by file path.

    Members scored on different validation files (or disagreeing on a label) cannot be
    averaged: that is an error, never a silent intersection. ``reader`` reads one
    member's file -> (label, probability) (validation, or the shift sample).
    """
    preds = [reader(Path(t["dir"])) for t in members]
    files = sorted(preds[0])
    for t, p in zip(members[1:], preds[1:], strict=True):
        missing, extra = set(files) - set(p), set(p) - set(files)
        if missing or extra:
            raise ValueError(
                f"validation predictions of {member_name(t)} do not align with "
                f"{member_name(members[0])}: {len(missing)} files missing, {len(extra)} extra "
                f"(e.g. {sorted(missing | extra)[:3]})"
            )
        bad = [f for f in files if p[f][0] != preds[0][f][0]]
        if bad:
            raise ValueError(f"labels of {member_name(t)} differ on {len(bad)} files: {bad[:3]}")
    labels = np.array([preds[0][f][0] for f in files], np.int64)
    probs = np.mean([[p[f][1] for f in files] for p in preds], axis=0)
    return files, labels, probs


def _shift_auc(members: list[dict[str, Any]]) -> float | None:
    """Exact AUC of the members' averaged shift-sample probabilities (None if one lacks them)."""
    if any(read_shift_predictions(Path(t["dir"])) is None for t in members):
        return None
    _, labels, probs = average_predictions(members, read_shift_predictions)
    return exact_roc_auc(labels, probs)


def candidate_ensembles(
    trials: list[dict[str, Any]],
    k_values: tuple[int, ...] = K_VALUES,
    kind: str = DEFAULT_OBJECTIVE,
) -> list[Ensemble]:
    """One ensemble per k: the top-k trials by objective ``kind`` that share the best
    trial's input."""
    ranked = sorted(trials, key=lambda t: objective(t, kind), reverse=True)
    if not ranked:
        return []
    eligible = [t for t in ranked if _input_key(t) == _input_key(ranked[0])]
    out = []
    for k in k_values:
        if 2 <= k <= len(eligible):
            members = eligible[:k]
            out.append(Ensemble(members, *average_predictions(members), _shift_auc(members)))
    return out


def best_candidate(
    trials: list[dict[str, Any]], ensembles: list[Ensemble], kind: str = DEFAULT_OBJECTIVE
) -> dict[str, Any]:
    """The single trial or ensemble record with the best objective ``kind`` (a tie goes to
    the single trial, the simpler model)."""
    return max([*trials, *(e.record() for e in ensembles)], key=lambda t: objective(t, kind))


# --------------------------------------------------------------------------- one Keras model


def build_ensemble_model(member_models: list[keras.Model], name: str = "ensemble") -> keras.Model:
    """One functional model: the members' shared input -> the mean of their probabilities.

    Members are nested whole (renamed in place to ``member_<i>_<name>``, as layer names
    must be unique within a model and every best.keras may carry the same one); each
    output is cast to float32 before averaging, so bfloat16 members average exactly.
    """
    from study.models.layers import MeanProbability

    if len(member_models) < 2:
        raise ValueError("an ensemble needs at least two members")
    shapes = {tuple(m.inputs[0].shape[1:]) for m in member_models}
    if len(shapes) != 1:
        raise ValueError(f"members take different inputs {sorted(shapes)}: cannot share one")
    inp = keras.Input(shapes.pop(), dtype="float32", name="image")
    outs = []
    for i, m in enumerate(member_models):
        if not m.name.startswith(f"member_{i}_"):
            m.name = f"member_{i}_{m.name}"
        outs.append(m(inp))
    out = MeanProbability(name="mean_probability")(outs)
    return keras.Model(inp, out, name=name)


def ensemble_members(model: Any) -> list[Any] | None:
    """The member models of an ensemble built by :func:`build_ensemble_model`, else None."""
    from study.models.layers import MeanProbability

    layers = getattr(model, "layers", [])
    if not any(isinstance(layer, MeanProbability) for layer in layers):
        return None
    return [layer for layer in layers if isinstance(layer, keras.Model)]


def load_ensemble_model(record: dict[str, Any]) -> keras.Model:
    """Build the winning ensemble from its members' best.keras files."""
    import study.models.layers  # noqa: F401  (registers custom layers for deserialisation)

    models = [
        keras.saving.load_model(Path(d) / "best.keras", compile=False)
        for d in record["member_dirs"]
    ]
    return build_ensemble_model(models, name=f"ensemble_{record['trial_id'].replace('-', '_')}")
