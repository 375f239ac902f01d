"""Read PyTorch ``state_dict`` files into NumPy arrays without importing torch.

Both the legacy (``_use_new_zipfile_serialization=False``) stream and the zip
format are understood. Pickles are read with a restricted unpickler that only
resolves the handful of globals a state dict needs, so a malicious ``.pth`` can
not run code while being loaded (unlike a plain ``pickle.load``).

Legacy layout: five pickles in a row (magic number, protocol version, system
info, the state dict whose tensors reference storages by persistent id, the
list of storage keys), then for every key in that list an int64 element count
followed by the storage's raw little-endian bytes.
"""

from __future__ import annotations

import collections
import io
import os
import pickle
import struct
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

__all__ = ["LEGACY_MAGIC", "LEGACY_PROTOCOL", "UnsafeWeightsError", "load_state_dict"]

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
LEGACY_PROTOCOL = 1001

# torch's typed storage classes and the NumPy dtype of their elements (little-endian).
_STORAGE_DTYPES: dict[str, np.dtype] = {
    "DoubleStorage": np.dtype("<f8"),
    "FloatStorage": np.dtype("<f4"),
    "HalfStorage": np.dtype("<f2"),
    "LongStorage": np.dtype("<i8"),
    "IntStorage": np.dtype("<i4"),
    "ShortStorage": np.dtype("<i2"),
    "CharStorage": np.dtype("i1"),
    "ByteStorage": np.dtype("u1"),
    "BoolStorage": np.dtype("?"),
    # NumPy has no bfloat16: keep the raw 16 bits and widen to float32 on rebuild.
    "BFloat16Storage": np.dtype("<u2"),
}


class UnsafeWeightsError(pickle.UnpicklingError):
    """A weights file asked for a global that a plain state dict never needs."""


@dataclass(frozen=True)
class _StorageType:
    """Stand-in for ``torch.FloatStorage`` & co.: only its element dtype matters."""

    name: str
    dtype: np.dtype


@dataclass(frozen=True)
class _StorageRef:
    """A storage (or a legacy view into one) whose bytes are read after the pickle."""

    key: str
    stype: _StorageType
    offset: int = 0  # elements into the root storage (legacy view_metadata)
    numel: int | None = None


@dataclass(frozen=True)
class _LazyTensor:
    """A tensor whose storage bytes come later in the stream."""

    storage: _StorageRef
    storage_offset: int
    size: tuple[int, ...]
    stride: tuple[int, ...]


def _rebuild_tensor(
    storage: _StorageRef, storage_offset: int, size: tuple, stride: tuple, *_: Any
) -> _LazyTensor:
    # Covers both _rebuild_tensor(storage, offset, size, stride) and the v2
    # signature with trailing requires_grad, backward_hooks, metadata.
    if not isinstance(storage, _StorageRef):
        raise UnsafeWeightsError(
            f"tensor built from a non-storage object: {type(storage).__name__}"
        )
    return _LazyTensor(storage, int(storage_offset), tuple(size), tuple(stride))


def _rebuild_parameter(data: Any, *_: Any) -> Any:
    # A Parameter is a tensor with requires_grad: NumPy only needs the tensor.
    return data


_ALLOWED_FUNCTIONS: dict[tuple[str, str], Callable[..., Any]] = {
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
}


class _RestrictedUnpickler(pickle.Unpickler):
    """Resolves only state-dict globals; storages become :class:`_StorageRef`."""

    def __init__(self, f: BinaryIO) -> None:
        super().__init__(f)
        # key -> element dtype of every storage met, to size the raw records later.
        self.storage_dtypes: dict[str, np.dtype] = {}

    def find_class(self, module: str, name: str) -> Any:
        if module == "collections" and name == "OrderedDict":
            # The real class, so that BUILD can attach ``_metadata`` to the dict.
            return collections.OrderedDict
        func = _ALLOWED_FUNCTIONS.get((module, name))
        if func is not None:
            return func
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(name, _STORAGE_DTYPES[name])
        raise UnsafeWeightsError(f"refusing to load global {module}.{name} from a weights file")

    def persistent_load(self, pid: Any) -> _StorageRef:
        # ('storage', storage_type, key, location, numel[, view_metadata])
        if not (isinstance(pid, tuple) and len(pid) in (5, 6) and pid[0] == "storage"):
            raise UnsafeWeightsError(f"unexpected persistent id {pid!r}")
        stype, key = pid[1], str(pid[2])
        if not isinstance(stype, _StorageType):
            raise UnsafeWeightsError(f"persistent id names a non-storage type: {stype!r}")
        self.storage_dtypes[key] = stype.dtype
        view = pid[5] if len(pid) == 6 else None
        if view is not None:
            # Very old files: (view_key, offset, view_size) into the root storage.
            _view_key, offset, view_size = view
            return _StorageRef(key, stype, int(offset), int(view_size))
        return _StorageRef(key, stype, 0, int(pid[4]))


def _restricted_load(f: BinaryIO) -> Any:
    return _RestrictedUnpickler(f).load()


def _restricted_load_with_storages(f: BinaryIO) -> tuple[Any, dict[str, np.dtype]]:
    unpickler = _RestrictedUnpickler(f)
    return unpickler.load(), unpickler.storage_dtypes


def _materialise(t: _LazyTensor, storages: dict[str, np.ndarray]) -> np.ndarray:
    """Apply offset, size and stride to a flat storage; return a contiguous copy."""
    ref = t.storage
    if ref.key not in storages:
        raise pickle.UnpicklingError(f"storage {ref.key!r} is missing from the file")
    flat = storages[ref.key]
    if ref.numel is not None:
        flat = flat[ref.offset : ref.offset + ref.numel]
    if any(s < 0 for s in t.stride) or any(n < 0 for n in t.size):
        raise pickle.UnpicklingError(f"negative size or stride in tensor of storage {ref.key!r}")
    if all(t.size):
        # Bounds check first: as_strided would happily read past the buffer.
        last = t.storage_offset + sum((n - 1) * s for n, s in zip(t.size, t.stride, strict=True))
        if t.storage_offset < 0 or last >= flat.size:
            raise pickle.UnpicklingError(
                f"tensor of storage {ref.key!r} reaches element {last}, storage holds {flat.size}"
            )
        base = flat[t.storage_offset :]
        item = base.itemsize
        out = np.lib.stride_tricks.as_strided(
            base, shape=t.size, strides=tuple(s * item for s in t.stride), writeable=False
        )
        # np.array, not ascontiguousarray: the latter turns 0-d scalars into shape (1,).
        arr = np.array(out, order="C", copy=True)
    else:
        arr = np.empty(t.size, dtype=flat.dtype)
    if ref.stype.name == "BFloat16Storage":
        arr = (arr.astype(np.uint32) << 16).view(np.float32)
    # Native byte order so downstream code (Keras, TensorFlow) gets ordinary arrays.
    return arr.astype(arr.dtype.newbyteorder("="), copy=False)


def _collect(obj: Any, storages: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    if not isinstance(obj, dict):
        raise pickle.UnpicklingError(f"expected a state dict, found {type(obj).__name__}")
    out: dict[str, np.ndarray] = {}
    for name, value in obj.items():
        if not isinstance(value, _LazyTensor):
            raise pickle.UnpicklingError(f"state dict entry {name!r} is not a tensor")
        out[str(name)] = _materialise(value, storages)
    return out


def _load_legacy(f: BinaryIO) -> dict[str, np.ndarray]:
    try:
        magic = _restricted_load(f)
    except UnsafeWeightsError:
        raise
    except Exception as exc:
        raise pickle.UnpicklingError(f"not a PyTorch legacy weights file: {exc}") from exc
    if magic != LEGACY_MAGIC:
        raise pickle.UnpicklingError(
            f"bad magic number {magic!r}: not a PyTorch legacy weights file "
            f"(expected {LEGACY_MAGIC:#x})"
        )
    protocol = _restricted_load(f)
    if protocol != LEGACY_PROTOCOL:
        raise pickle.UnpicklingError(
            f"unsupported legacy protocol version {protocol!r} (expected {LEGACY_PROTOCOL})"
        )
    sys_info = _restricted_load(f)
    if isinstance(sys_info, dict) and not sys_info.get("little_endian", True):
        raise pickle.UnpicklingError("big-endian weights files are not supported")
    state, dtypes = _restricted_load_with_storages(f)
    keys = _restricted_load(f)
    if not isinstance(keys, list):
        raise pickle.UnpicklingError(f"expected the storage key list, found {type(keys).__name__}")

    storages: dict[str, np.ndarray] = {}
    for key in keys:
        key = str(key)
        header = f.read(8)
        if len(header) != 8:
            raise pickle.UnpicklingError(f"file truncated before storage {key!r}")
        (numel,) = struct.unpack("<q", header)
        dtype = dtypes.get(key)
        if dtype is None:  # its element size is unknown, so its bytes can't be skipped
            raise pickle.UnpicklingError(
                f"storage {key!r} is listed but never referenced by the state dict"
            )
        nbytes = numel * dtype.itemsize
        data = f.read(nbytes)
        if numel < 0 or len(data) != nbytes:
            raise pickle.UnpicklingError(f"file truncated inside storage {key!r}")
        storages[key] = np.frombuffer(data, dtype=dtype)
    return _collect(state, storages)


def _load_zip(path: Path) -> dict[str, np.ndarray]:
    with zipfile.ZipFile(path) as zf:
        names = zf.namelist()
        pkl = next((n for n in names if n.endswith("/data.pkl") or n == "data.pkl"), None)
        if pkl is None:
            raise pickle.UnpicklingError(f"{path}: zip file without data.pkl")
        prefix = pkl[: -len("data.pkl")]
        state, dtypes = _restricted_load_with_storages(io.BytesIO(zf.read(pkl)))
        # Zip members hold raw bytes without a count: the size comes from the file.
        storages = {
            key: np.frombuffer(zf.read(f"{prefix}data/{key}"), dtype=dtype)
            for key, dtype in dtypes.items()
        }
    return _collect(state, storages)


def load_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Load a PyTorch ``state_dict`` file as ``{name: contiguous ndarray}``, without torch.

    Raises :class:`UnsafeWeightsError` for any pickle global other than
    ``OrderedDict``, torch's tensor rebuild helpers and its storage types.
    """
    path = Path(path)
    if zipfile.is_zipfile(path):
        return _load_zip(path)
    with open(path, "rb") as f:
        return _load_legacy(f)
