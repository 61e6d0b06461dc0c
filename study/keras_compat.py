"""Every place the study relies on Keras / Keras-Tuner beyond their documented API.

Why one module: an upgrade of either library breaks these first, so they are kept
together, each behind a small named function that says what it touches and why, and
``tests/test_keras_compat.py`` checks that each touched attribute still exists in the
installed versions. Nothing else in the project may use a private Keras or Keras-Tuner
name.
"""

from __future__ import annotations

from typing import Any

# The versions these touchpoints were written against (checked by the tests).
KERAS_VERSION = "3.15.1"
KERAS_TUNER_VERSION = "1.4.8"


def cap_trials(oracle: Any, n: int) -> None:
    """Let ``oracle`` hand out at most ``n`` trials.

    Touches ``Oracle.max_trials``: Hyperband takes no ``max_trials`` argument, but its
    oracle's ``create_trial`` answers STOPPED once ``len(trials) >= max_trials``, so
    setting the attribute gives Hyperband the study's per-family trial budget.
    """
    oracle.max_trials = n


def stop_new_trials(oracle: Any) -> None:
    """Make the oracle's next ``create_trial`` answer STOPPED (the time budget is spent).

    Touches ``Oracle.max_trials`` and ``Oracle.trials``: capping the budget at the
    number of trials already created ends the search loop the same way a used-up
    budget does, for every oracle kind. With no trial yet the cap is -1, not 0:
    Keras-Tuner reads a cap of 0 as "no limit", and every count is ``>= -1``.
    Only the chief's (or a single process's) ``Oracle`` has ``trials``; a worker's
    ``OracleClient`` does not, so a worker never calls this.
    """
    oracle.max_trials = len(oracle.trials) or -1


def forget_restored_epoch(model: Any) -> None:
    """Make the running ``fit`` start at its own ``initial_epoch`` after a backup was dropped.

    Touches ``Model._initial_epoch``: ``BackupAndRestore`` sets it from its training
    metadata, and Keras' ``fit`` reads it after ``on_train_begin`` in place of the
    ``initial_epoch`` argument when it is set. Clearing it (``None``, the value Keras
    starts with) is the only way to undo a half-read backup.
    """
    model._initial_epoch = None


def optimizer_variable_index(optimizer: Any, variable: Any) -> int:
    """The position of ``variable`` in the list ``optimizer.build`` was given.

    Touches ``Optimizer._get_variable_index``: ``update_step`` receives the backend's
    variable (a ``tf.Variable`` under TensorFlow, without the Keras path), and this is
    how Keras' own optimizers find its slot; the layer-wise learning rate uses it to
    find the variable's multiplier.
    """
    return optimizer._get_variable_index(variable)
