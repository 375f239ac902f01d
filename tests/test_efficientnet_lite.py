"""EfficientNet-Lite0/1/2 in Keras: architecture, scaling and the ImageNet ports."""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np
import pytest

from bloodlib.models import torch_port
from bloodlib.models.efficientnet_lite import (
    VARIANTS,
    block_specs,
    build_efficientnet_lite,
    imagenet_port,
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
    """One random-init Lite0 feature model shared by the architecture checks."""
    return build_efficientnet_lite("efficientnet_lite0", weights=None, pooling=None)


def _count(model: keras.Model, cls: type) -> int:
    return sum(type(layer) is cls for layer in model.layers)


def test_feature_shapes(headless: keras.Model) -> None:
    assert headless.output_shape == (None, 7, 7, 1280)
    avg = build_efficientnet_lite(weights=None)  # Lite0 at 224 by default
    assert avg.output_shape == (None, 1280)
    assert avg.count_params() == 3_413_024  # 3.4M; conv/BN weights only
    out = avg(np.zeros((1, 224, 224, 3), np.float32), training=False)
    assert tuple(out.shape) == (1, 1280)
    assert build_efficientnet_lite(weights=None, pooling="max").output_shape == (None, 1280)


def test_layer_structure(headless: keras.Model) -> None:
    # 1 stem + 15 expand + 16 project + 1 head convs; no squeeze-excitation anywhere.
    assert _count(headless, keras.layers.Conv2D) == 33
    assert _count(headless, keras.layers.DepthwiseConv2D) == 16
    assert _count(headless, keras.layers.BatchNormalization) == 49
    assert _count(headless, keras.layers.Add) == 9  # stride-1 blocks keeping width
    assert _count(headless, keras.layers.ZeroPadding2D) == 0  # TF "same" padding throughout
    names = {layer.name for layer in headless.layers}
    assert "block0_expand_conv" not in names
    assert {"stem_conv", "block15_dwconv", "top_bn"} <= names
    assert headless.get_layer("block15_project_conv").output.shape[-1] == 320


def test_scaling_follows_the_reference() -> None:
    """Lite1/Lite2 deepen the middle stages (1, 3, 3, 4, 4, 5, 1 blocks); Lite2 also widens."""
    assert len(block_specs("efficientnet_lite0")) == 16
    assert len(block_specs("efficientnet_lite1")) == len(block_specs("efficientnet_lite2")) == 21
    widths = sorted({spec[4] for spec in block_specs("efficientnet_lite2")})
    assert widths == [16, 24, 48, 88, 120, 208, 352]  # round_filters(c * 1.1) to multiples of 8
    assert sorted({spec[4] for spec in block_specs("efficientnet_lite1")}) == [
        16, 24, 40, 80, 112, 192, 320
    ]  # fmt: skip
    strides = [spec[1] for spec in block_specs("efficientnet_lite2")]
    assert [i for i, s in enumerate(strides) if s == 2] == [1, 4, 7, 15]
    assert [VARIANTS[f"efficientnet_lite{n}"].input_size for n in range(3)] == [224, 240, 260]


def test_preprocess_input() -> None:
    x = np.array([0, 127, 255], dtype=np.uint8)
    np.testing.assert_allclose(preprocess_input(x), [-127 / 128, 0.0, 1.0])
    t = keras.ops.convert_to_tensor(x)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(preprocess_input(t)), [-127 / 128, 0, 1])


def test_random_init_needs_no_package(monkeypatch: pytest.MonkeyPatch) -> None:
    def unavailable(self: object) -> Path:
        raise AssertionError("weights=None must not look for the package")

    monkeypatch.setattr(torch_port.WeightsPackage, "locate", unavailable)
    model = build_efficientnet_lite("efficientnet_lite2", weights=None)
    assert model.input_shape == (None, 260, 260, 3)  # the variant's native size by default
    assert not imagenet_port("efficientnet_lite2").cache_path().exists()


def test_unknown_variant_and_missing_weights_file_fail_fast(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="efficientnet_lite1"):
        build_efficientnet_lite("efficientnet_lite7", weights=None)
    with pytest.raises(FileNotFoundError, match="nope.weights.h5"):
        build_efficientnet_lite(weights=tmp_path / "nope.weights.h5")


def _run(model: keras.Model, x: np.ndarray) -> np.ndarray:
    # An eager call: predict() would first trace a graph, which costs seconds here.
    return keras.ops.convert_to_numpy(model(x, training=False))


def photos(size: int) -> np.ndarray:
    """Chelsea the cat and a cup of coffee (scikit-image) squashed to ``size``, 0-255 floats.

    Plain resize, not shorter-side + centre crop: both rank the right class
    first, but the crop cuts into Chelsea and drops her top-1 confidence.
    """
    import skimage.data
    import skimage.transform

    return np.stack(
        [
            skimage.transform.resize(
                getattr(skimage.data, name)(), (size, size), preserve_range=True, anti_aliasing=True
            )
            for name in ("chelsea", "coffee")
        ]
    ).astype(np.float32)


def require(package: torch_port.WeightsPackage) -> None:
    """Skip unless the weights package is installed."""
    try:
        package.locate()
    except torch_port.WeightsPackageError:
        pytest.skip(f"needs {package.pip_command}")


def assert_cat_and_espresso(probs: np.ndarray, min_prob: float) -> None:
    """Row 0 is a cat, row 1 an espresso, each with at least ``min_prob``."""
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-4)
    assert int(probs[0].argmax()) in CAT_CLASSES
    assert probs[0, sorted(CAT_CLASSES)].sum() > min_prob
    assert int(probs[1].argmax()) == ESPRESSO
    assert probs[1, ESPRESSO] > min_prob


# Scored at 224 px for every variant: these two squashed photos lose confidence as the
# size grows for Lite0 as much as for the others (Lite0: cat classes 0.96 at 224, 0.63 at
# 260), a property of the photos, not of the port. Measured at 224 (cat classes, espresso):
# Lite0 0.96, 0.91; Lite1 0.98, 0.89; Lite2 1.00, 0.99.
@pytest.mark.parametrize(
    "variant, params",
    [
        ("efficientnet_lite0", 4_694_024),
        ("efficientnet_lite1", 5_470_344),
        ("efficientnet_lite2", 6_150_168),
    ],
)
def test_imagenet_port_classifies_and_caches(
    monkeypatch: pytest.MonkeyPatch, variant: str, params: int
) -> None:
    v = VARIANTS[variant]
    require(v.weights)
    pytest.importorskip("skimage")
    shape = (224, 224, 3)
    x = preprocess_input(photos(shape[0]))

    # First build converts the .pth (through a full model, copied by layer name).
    features = build_efficientnet_lite(variant, shape, False, "imagenet", pooling=None)
    assert imagenet_port(variant).cache_path().is_file()

    # Later builds must come from the Keras cache, never the .pth.
    def no_pth(path: object) -> None:
        raise AssertionError("the cached Keras weights should have been used")

    monkeypatch.setattr(torch_port, "load_state_dict", no_pth)
    model = build_efficientnet_lite(variant, shape, include_top=True, weights="imagenet")
    assert model.count_params() == params  # backbone + 1.28M dense head
    assert_cat_and_espresso(_run(model, x), 0.85)

    # Converted-headless and cached-full models agree on the backbone.
    reference = keras.Model(model.input, model.get_layer("top_activation").output)
    np.testing.assert_allclose(_run(features, x), _run(reference, x), rtol=1e-4, atol=1e-4)
