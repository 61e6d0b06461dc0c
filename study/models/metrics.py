"""Metrics compiled into every model, with stable names.

Why stable names: the runner, the tuner objective and the report read history keys such as
``val_auc``, ``val_pr_auc`` and ``val_specificity``; Keras would otherwise number duplicates
(``auc_1``) and break them. Specificity matters clinically (false alarms on NORMAL films)
and Keras has no thresholded one, so it is defined here.
"""

from __future__ import annotations

from typing import Any

import keras
from keras import ops

THRESHOLD = 0.5

# Stable metric names, in the order compile_metrics() returns them.
METRIC_NAMES: tuple[str, ...] = (
    "accuracy",
    "precision",
    "recall",
    "auc",
    "pr_auc",
    "specificity",
)


@keras.saving.register_keras_serializable(package="pneumoscope")
class Specificity(keras.metrics.Metric):
    """True-negative rate TN / (TN + FP) of ``y_pred >= threshold`` (NORMAL = 0 is negative).

    Counts accumulate over batches (like Precision/Recall), so the epoch value is exact, not
    an average of batch ratios. Returns 0 when there are no negatives yet.
    """

    def __init__(
        self, threshold: float = THRESHOLD, name: str = "specificity", dtype: Any = None
    ) -> None:
        super().__init__(name=name, dtype=dtype)
        self.threshold = float(threshold)
        self.true_negatives = self.add_variable(
            shape=(), initializer="zeros", dtype="float32", name="true_negatives"
        )
        self.false_positives = self.add_variable(
            shape=(), initializer="zeros", dtype="float32", name="false_positives"
        )

    def update_state(self, y_true: Any, y_pred: Any, sample_weight: Any = None) -> None:
        y_true = ops.reshape(ops.cast(y_true, "float32"), (-1,))
        y_pred = ops.reshape(ops.cast(y_pred, "float32"), (-1,))
        negative = ops.cast(y_true < 0.5, "float32")
        predicted_pos = ops.cast(y_pred >= self.threshold, "float32")
        if sample_weight is None:
            weight = ops.ones_like(y_true)
        else:
            weight = ops.reshape(ops.cast(sample_weight, "float32"), (-1,))
            weight = ops.broadcast_to(weight, ops.shape(y_true))
        self.true_negatives.assign_add(ops.sum(negative * (1.0 - predicted_pos) * weight))
        self.false_positives.assign_add(ops.sum(negative * predicted_pos * weight))

    def result(self) -> Any:
        return ops.divide_no_nan(self.true_negatives, self.true_negatives + self.false_positives)

    def reset_state(self) -> None:
        self.true_negatives.assign(0.0)
        self.false_positives.assign(0.0)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "threshold": self.threshold}


def compile_metrics(threshold: float = THRESHOLD) -> list[keras.metrics.Metric]:
    """Fresh metric objects for ``model.compile`` (a new list per model: metrics hold state)."""
    return [
        keras.metrics.BinaryAccuracy(name="accuracy", threshold=threshold),
        keras.metrics.Precision(name="precision", thresholds=threshold),
        keras.metrics.Recall(name="recall", thresholds=threshold),
        keras.metrics.AUC(name="auc", curve="ROC", num_thresholds=200),
        keras.metrics.AUC(name="pr_auc", curve="PR", num_thresholds=200),
        Specificity(name="specificity", threshold=threshold),
    ]
