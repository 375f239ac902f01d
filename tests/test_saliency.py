"""Saliency that passes its sanity checks, on a tiny network whose evidence sits in a known place.

The network reads only the red of the image's top-left quadrant (a crop before pooling), so
a faithful map lies there; randomising its weights must change the map; removing the most
salient pixels first must lower the class probability faster than removing random ones.
"""

from __future__ import annotations

import numpy as np
import pytest

from bloodlib.predict import cam, saliency

pytestmark = pytest.mark.unit

SIZE = 32


def quadrant_network(seed: int = 0):
    """Conv 3x3 (8 channels) -> keep the top-left 16x16 -> pool -> dense head, 2 classes.

    The head's class 0 weight follows the red-minus-green channel: a red patch in the top-left
    quadrant makes class 0 likely, the same patch anywhere else does nothing.
    """
    import keras

    L = keras.layers
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((SIZE, SIZE, 3))
    x = L.Conv2D(8, 3, padding="same", activation="relu", name="conv")(inputs)
    x = L.Cropping2D(((0, SIZE // 2), (0, SIZE // 2)), name="top_left")(x)
    x = L.GlobalAveragePooling2D(name="pool")(x)
    outputs = L.Dense(2, activation="softmax", name="head")(x)
    model = keras.Model(inputs, outputs)
    kernel = np.zeros((3, 3, 3, 8), np.float32)
    kernel[1, 1, 0, 0], kernel[1, 1, 1, 0] = 1 / 64, -1 / 64  # channel 0: red minus green
    kernel[1, 1, :, 1:] = np.random.default_rng(seed).normal(0, 0.01, (3, 7))
    model.get_layer("conv").set_weights([kernel, np.zeros(8, np.float32)])
    head = np.zeros((8, 2), np.float32)
    head[0, 0], head[0, 1] = 8.0, -8.0
    model.get_layer("head").set_weights([head, np.array([-1.0, 1.0], np.float32)])
    return model


def red_patch_images(n: int = 4) -> np.ndarray:
    rng = np.random.default_rng(1)
    x = np.full((n, SIZE, SIZE, 3), 150.0, np.float32) + rng.normal(0, 3, (n, SIZE, SIZE, 3))
    for i in range(n):
        top, left = rng.integers(2, 8, size=2)
        x[i, top : top + 6, left : left + 6] = (230.0, 60.0, 80.0)
    return np.clip(x, 0, 255).astype(np.float32)


@pytest.fixture(scope="module")
def net():
    return quadrant_network()


def test_the_map_lies_where_the_evidence_is(net):
    x = red_patch_images()
    assert (np.asarray(net(x)).argmax(axis=1) == 0).all()
    maps = cam.grad_cam(net, x, 0, layer="conv")
    patch = x[..., 0] > 200  # the red patch: the only evidence for class 0
    # Grad-CAM weighs every position's activations by the class's mean gradient, so the
    # background's faint activations still show (about a sixth of the mass here); the map's
    # peak and most of its mass must lie on the patch.
    peaks = maps.reshape(len(x), -1).argmax(axis=1)
    assert patch.reshape(len(x), -1)[np.arange(len(x)), peaks].all()
    on_patch = (maps * patch).sum(axis=(1, 2)) / patch.sum(axis=(1, 2))
    off_patch = (maps * ~patch).sum(axis=(1, 2)) / (~patch).sum(axis=(1, 2))
    assert (on_patch > 5 * off_patch).all()


def test_randomised_weights_change_the_map_and_come_back(net):
    x = red_patch_images()
    before = [np.array(w) for w in net.get_weights()]
    check = saliency.randomisation_check(net, x, [0] * len(x), layer="conv", n_layers=2)
    assert check["layers"] == ["head", "conv"]
    assert check["mean_rank_correlation"] < 0.5
    for w0, w1 in zip(before, net.get_weights(), strict=True):  # restored exactly
        np.testing.assert_array_equal(w0, np.asarray(w1))
    same = saliency.randomisation_check(net, x, [0] * len(x), layer="conv", n_layers=0)
    np.testing.assert_allclose(same["rank_correlation"], 1.0, atol=1e-9)


def test_removing_salient_pixels_first_drops_the_class_faster_than_random(net):
    x = red_patch_images()
    maps = cam.grad_cam(net, x, 0, layer="conv")
    result = saliency.deletion_test(net, x, maps, [0] * len(x))
    assert result["salient"].shape == (len(x), len(saliency.DELETION_STEPS))
    np.testing.assert_allclose(
        result["salient"][:, 0], result["random"][:, 0]
    )  # nothing removed yet
    assert result["faster_than_random"] == 1.0
    assert result["mean_auc_salient"] < result["mean_auc_random"] - 0.1
    # An uninformative map (all equal: a stable order from the top-left pixel on) is no test:
    flat = saliency.deletion_test(net, x, np.ones_like(maps), [0] * len(x))
    assert flat["mean_auc_salient"] > result["mean_auc_salient"]


def test_the_finer_layer_has_twice_the_final_resolution():
    from bloodlib.train.network import build_classifier
    from bloodlib.train.recipe import FinetuneConfig

    model = build_classifier(FinetuneConfig(image_size=160, weights=None))
    name = saliency.finer_layer(model)
    sides = dict(saliency._maps_4d(model))
    assert sides[name] == 10 and min(sides.values()) == 5  # 10x10, not the last conv's 5x5
    assert name == [n for n, s in saliency._maps_4d(model) if s == 10][-1]


def test_rank_correlation_is_spearmans():
    from scipy.stats import spearmanr

    rng = np.random.default_rng(0)
    a, b = rng.random((3, 6, 6)), rng.random((3, 6, 6))
    want = [spearmanr(a[i].ravel(), b[i].ravel()).statistic for i in range(3)]
    np.testing.assert_allclose(saliency.rank_correlation(a, b), want)


def test_a_faithful_map_passes_both_checks_and_a_misplaced_one_fails(net):
    x = red_patch_images(8)  # a one-sided Wilcoxon needs 6 or more pairs to reach p < 0.05
    maps = cam.grad_cam(net, x, 0, layer="conv")
    check = saliency.randomisation_check(net, x, [0] * len(x), layer="conv", n_layers=2)
    deletion = saliency.deletion_test(net, x, maps, [0] * len(x))
    assert deletion["p_value"] < 0.01
    assert saliency.passes(check, deletion) == {"randomisation": True, "deletion": True}
    # A map the randomised network would draw as well, pointing away from the evidence (it
    # ranks the bottom-right corner first and the top-left quadrant last):
    same = saliency.randomisation_check(net, x, [0] * len(x), layer="conv", n_layers=0)
    ramp = np.add.outer(np.arange(SIZE), np.arange(SIZE)).astype(np.float32)
    elsewhere = saliency.deletion_test(net, x, np.broadcast_to(ramp, maps.shape), [0] * len(x))
    assert elsewhere["p_value"] > 0.5
    assert saliency.passes(same, elsewhere) == {"randomisation": False, "deletion": False}
