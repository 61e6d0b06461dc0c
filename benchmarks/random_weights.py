"""Random-init stand-ins for the ImageNet weights files, for throughput benchmarks only.

Why: a training step costs the same whatever the weight values, and the transfer
hypermodels only build from a weights file (they never fall back to random init under
their name). So the benchmarks write randomly initialised backbones under the exact file
names :func:`study.models.weights.resolve_imagenet_weights` looks for, in a temporary
directory, and build the real hypermodels from them: ResNet50V2 needs no download, and
the timings do not depend on which machine has which weights.
"""

from __future__ import annotations

from pathlib import Path

import h5py
import keras

from study.models.offline_weights import weights_filename
from study.models.weights import KERAS_NOTOP_FILES, WeightsSource


def _write_resnet(weights_dir: Path) -> WeightsSource:
    from keras.src.legacy.saving import legacy_h5_format  # Keras' own writer of notop .h5

    arch, fname = KERAS_NOTOP_FILES["resnet"][0]
    path = weights_dir / fname
    if not path.is_file():
        backbone = keras.applications.ResNet50V2(include_top=False, weights=None)
        with h5py.File(path, "w") as f:
            legacy_h5_format.save_weights_to_hdf5_group(f, backbone)
    return WeightsSource("resnet", True, "local-file", path, arch)


def _write_lite0(weights_dir: Path, image_size: int) -> WeightsSource:
    from study.models.efficientnet_lite import build_efficientnet_lite

    path = weights_dir / weights_filename("lite0")
    if not path.is_file():
        full = build_efficientnet_lite("lite0", (image_size, image_size, 3), include_top=True)
        full.save_weights(path)
    return WeightsSource("efficientnet", True, "local-file", path, "EfficientNetLite0")


def random_weights(family: str, weights_dir: Path, image_size: int) -> WeightsSource | None:
    """A WeightsSource of random weights for ``family`` (None: the family needs none)."""
    weights_dir.mkdir(parents=True, exist_ok=True)
    policy = keras.config.dtype_policy()
    keras.config.set_dtype_policy("float32")  # weights files hold float32, as ImageNet's do
    try:
        if family == "resnet":
            return _write_resnet(weights_dir)
        if family == "efficientnet":
            return _write_lite0(weights_dir, image_size)
        return None
    finally:
        keras.config.set_dtype_policy(policy)
