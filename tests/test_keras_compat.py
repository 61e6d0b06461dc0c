"""study/keras_compat.py's touchpoints still exist and still act as its docstrings say.

An upgrade of Keras or Keras-Tuner fails here first, naming the touchpoint, instead of
deep inside a study run.
"""

from __future__ import annotations

from pathlib import Path

import keras
import keras_tuner as kt
import numpy as np

from study import keras_compat


def _tiny_model(hp: kt.HyperParameters | None = None) -> keras.Model:
    lr = hp.Float("lr", 1e-3, 1e-1) if hp is not None else 1e-2
    inp = keras.Input((2,))
    model = keras.Model(inp, keras.layers.Dense(1, activation="sigmoid")(inp))
    model.compile(keras.optimizers.SGD(lr), "binary_crossentropy")
    return model


def _tuner(kind: type, tmp_path: Path, **kwargs: object) -> kt.Tuner:
    return kind(
        hypermodel=_tiny_model,
        objective=kt.Objective("val_auc", "max"),
        directory=str(tmp_path),
        project_name="p",
        **kwargs,
    )


def test_versions_are_the_ones_keras_compat_was_written_against() -> None:
    assert keras.__version__ == keras_compat.KERAS_VERSION
    assert kt.__version__ == keras_compat.KERAS_TUNER_VERSION


def test_oracles_have_max_trials_and_trials(tmp_path: Path) -> None:
    for kind, kwargs in (
        (kt.Hyperband, {"max_epochs": 3}),
        (kt.RandomSearch, {"max_trials": 5}),
        (kt.BayesianOptimization, {"max_trials": 5}),
    ):
        oracle = _tuner(kind, tmp_path / kind.__name__, **kwargs).oracle
        assert hasattr(oracle, "max_trials") and isinstance(oracle.trials, dict), kind


def test_cap_trials_limits_hyperband(tmp_path: Path) -> None:
    oracle = _tuner(kt.Hyperband, tmp_path, max_epochs=9).oracle
    keras_compat.cap_trials(oracle, 1)
    assert oracle.create_trial("t").status == kt.engine.trial.TrialStatus.RUNNING
    assert oracle.create_trial("u").status == kt.engine.trial.TrialStatus.STOPPED


def test_stop_new_trials_stops_the_next_trial(tmp_path: Path) -> None:
    oracle = _tuner(kt.RandomSearch, tmp_path, max_trials=5).oracle
    assert oracle.create_trial("t").status == kt.engine.trial.TrialStatus.RUNNING
    keras_compat.stop_new_trials(oracle)
    assert oracle.create_trial("u").status == kt.engine.trial.TrialStatus.STOPPED


def test_stop_new_trials_stops_an_oracle_with_no_trial_yet(tmp_path: Path) -> None:
    """A family reached after the deadline: its oracle must not hand out a first trial."""
    for kind, kwargs in (
        (kt.Hyperband, {"max_epochs": 3}),
        (kt.RandomSearch, {"max_trials": 5}),
        (kt.BayesianOptimization, {"max_trials": 5}),
    ):
        oracle = _tuner(kind, tmp_path / kind.__name__, **kwargs).oracle
        keras_compat.stop_new_trials(oracle)
        assert oracle.create_trial("t").status == kt.engine.trial.TrialStatus.STOPPED, kind
        assert not oracle.trials, kind


class _Epochs(keras.callbacks.Callback):
    """Records the epochs fit ran; optionally drops the epoch a backup restored."""

    def __init__(self, forget: bool) -> None:
        super().__init__()
        self.forget, self.seen = forget, []

    def on_train_begin(self, logs: dict | None = None) -> None:
        if self.forget:
            keras_compat.forget_restored_epoch(self.model)

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        self.seen.append(epoch)


def test_forget_restored_epoch_undoes_backup_and_restore(tmp_path: Path) -> None:
    model = _tiny_model()
    assert hasattr(model, "_initial_epoch")
    x, y = np.ones((4, 2), np.float32), np.array([0, 1, 0, 1], np.float32)

    def fit(forget: bool) -> list[int]:
        seen = _Epochs(forget)
        backup = keras.callbacks.BackupAndRestore(str(tmp_path), delete_checkpoint=False)
        model.fit(x, y, epochs=3, verbose=0, callbacks=[backup, seen])
        return seen.seen

    assert fit(False) == [0, 1, 2]
    assert fit(False) == [], "BackupAndRestore no longer resumes after the saved epoch"
    assert fit(True) == [0, 1, 2]


def test_optimizer_variable_index_finds_backend_variables() -> None:
    """update_step sees backend variables; the index must map them to build()'s order."""
    a, b = keras.Variable(np.zeros(2), name="a"), keras.Variable(np.zeros(3), name="b")
    opt = keras.optimizers.Adam()
    opt.build([a, b])
    assert keras_compat.optimizer_variable_index(opt, b) == 1
    assert keras_compat.optimizer_variable_index(opt, a.value) == 0
