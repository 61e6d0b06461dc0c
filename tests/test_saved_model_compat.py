"""A ``winner.keras`` saved before the stage-subpackage move still loads.

Keras writes each custom object's module path into ``config.json`` (``study.layers``
and ``study.metrics`` before the move) next to its registered name
(``pneumoscope>SpaceToDepth``). The test saves a model that uses every custom object,
rewrites the module paths to the pre-move ones, exactly as an old file has them, and
loads it the way the study and the service do.
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import keras
import numpy as np

from study.models.layers import GrayToRGB, LayerwiseAdam, SpaceToDepth
from study.models.metrics import compile_metrics

OLD_MODULES = {"study.models.layers": "study.layers", "study.models.metrics": "study.metrics"}


def _model() -> keras.Model:
    inp = keras.Input((16, 16, 1))
    x = SpaceToDepth(2)(inp)
    x = GrayToRGB()(keras.layers.Conv2D(1, 1)(x))
    x = keras.layers.GlobalAveragePooling2D()(x)
    model = keras.Model(inp, keras.layers.Dense(1, activation="sigmoid")(x))
    model.compile(
        optimizer=LayerwiseAdam(learning_rate=1e-3),
        loss="binary_crossentropy",
        metrics=compile_metrics(),
    )
    return model


def _as_pre_move(src: Path, dst: Path) -> list[str]:
    """Copy a .keras archive with its custom objects' module paths set to the old ones."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for item in zin.infolist():
            data = zin.read(item.filename)
            if item.filename == "config.json":
                text = data.decode()
                for new, old in OLD_MODULES.items():
                    text = text.replace(f'"module": "{new}"', f'"module": "{old}"')
                data = text.encode()
            zout.writestr(item, data)
    config = json.loads(zipfile.ZipFile(dst).read("config.json"))
    return sorted(_modules(config))


def _modules(node: object) -> set[str]:
    if isinstance(node, dict):
        found = {node["module"]} if isinstance(node.get("module"), str) else set()
        return found.union(*(_modules(v) for v in node.values()))
    if isinstance(node, list):
        return set().union(*(_modules(v) for v in node))
    return set()


def test_winner_keras_saved_before_the_move_loads(tmp_path: Path) -> None:
    keras.utils.set_random_seed(0)
    model = _model()
    x = np.random.default_rng(0).random((8, 16, 16, 1)).astype("float32")
    model.fit(x, np.array([0, 1] * 4), epochs=1, verbose=0)
    model.save(tmp_path / "new.keras")
    modules = _as_pre_move(tmp_path / "new.keras", tmp_path / "old.keras")
    assert "study.layers" in modules and "study.metrics" in modules
    assert not any(m.startswith("study.models") for m in modules)

    old = keras.saving.load_model(tmp_path / "old.keras")
    types = [type(layer).__name__ for layer in old.layers]
    assert "SpaceToDepth" in types and "GrayToRGB" in types
    assert type(old.optimizer).__name__ == "LayerwiseAdam"
    np.testing.assert_allclose(old.predict(x, verbose=0), model.predict(x, verbose=0), rtol=1e-6)
