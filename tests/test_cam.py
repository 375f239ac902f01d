"""Grad-CAM: the map peaks where a hand-built model's evidence is; saved nested classifiers work."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")  # headless; the library itself never forces a backend

import keras  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
import tiny_models  # noqa: E402
from shared_data import dev_dir  # noqa: E402
from tiny_models import write_cell  # noqa: E402

from bloodlib import CLASSES  # noqa: E402
from bloodlib.models import backbones
from bloodlib.predict import cam
from bloodlib.teach import plots
from bloodlib.train.network import build_classifier
from bloodlib.train.recipe import FinetuneConfig

# Every test is `unit` (synthetic, fast) except the one on the real dev images (`data`).

SIZE = 32
STRIDE = 4  # 32 px input -> an 8 x 8 feature map
RED, GREEN = np.array([220, 30, 30], np.float32), np.array([30, 220, 30], np.float32)
GREY = np.array([128, 128, 128], np.float32)
QUADRANTS = {
    "top-left": (slice(0, 16), slice(0, 16)),
    "top-right": (slice(0, 16), slice(16, 32)),
    "bottom-left": (slice(16, 32), slice(0, 16)),
    "bottom-right": (slice(16, 32), slice(16, 32)),
}


def colour_detector(name: str = "detector") -> keras.Model:
    """A nested 'backbone': channel 0 of its map fires on red, channel 1 on green, then pooling."""
    L = keras.layers
    inputs = keras.Input((SIZE, SIZE, 3), name="detector_input")
    x = L.Conv2D(2, STRIDE, strides=STRIDE, name="block0_conv")(inputs)
    x = L.ReLU(name="evidence")(x)
    x = L.GlobalAveragePooling2D(name="avg_pool")(x)
    model = keras.Model(inputs, x, name=name)
    kernel = np.zeros((STRIDE, STRIDE, 3, 2), np.float32)
    kernel[..., 0, 0], kernel[..., 1, 0] = 1.0, -1.0  # red minus green
    kernel[..., 1, 1], kernel[..., 0, 1] = 1.0, -1.0  # green minus red
    model.get_layer("block0_conv").set_weights([kernel / STRIDE**2, np.zeros(2, np.float32)])
    return model


def colour_classifier() -> keras.Model:
    """Shaped like ``finetune.build_classifier``: image -> features(preprocess -> base) -> head.

    Class 1's logit grows with the red channel of the map only, class 0's with the green one.
    """
    L = keras.layers
    inner_in = keras.Input((SIZE, SIZE, 3), name="image")
    features = keras.Model(
        inner_in, colour_detector()(L.Rescaling(1 / 255.0, name="preprocess")(inner_in)), name="f"
    )
    inputs = keras.Input((SIZE, SIZE, 3), name="image")
    x = L.Dropout(0.5, name="head_dropout")(features(inputs))
    outputs = L.Dense(2, activation="softmax", name="head")(x)
    model = keras.Model(inputs, outputs)
    model.get_layer("head").set_weights(
        [np.array([[0.0, 50.0], [50.0, 0.0]], np.float32), np.zeros(2, np.float32)]
    )
    return model


def picture(red: str, green: str | None = None) -> np.ndarray:
    """A grey image with a red square in quadrant ``red`` (and a green one in ``green``)."""
    img = np.tile(GREY, (SIZE, SIZE, 1))
    img[QUADRANTS[red]] = RED
    if green is not None:
        img[QUADRANTS[green]] = GREEN
    return img.astype(np.uint8)


def quadrant_share(heat: np.ndarray, quadrant: str) -> float:
    return float(heat[QUADRANTS[quadrant]].sum() / max(heat.sum(), 1e-9))


@pytest.fixture(scope="module")
def colour_model(tmp_path_factory) -> keras.Model:
    """The hand-set classifier, saved and loaded back as the notebooks load theirs."""
    path = tmp_path_factory.mktemp("cam") / "colour.keras"
    colour_classifier().save(path)
    return keras.models.load_model(path, compile=False)


@pytest.mark.unit
def test_the_nested_feature_map_is_the_graph_disconnected_trap(colour_model):
    """The naive gradient model fails: the map is a tensor of the nested model's graph."""
    inner = colour_model.get_layer("f").get_layer("detector").get_layer("evidence")
    with pytest.raises(ValueError):
        keras.Model(colour_model.inputs, [inner.output, colour_model.outputs[0]])


@pytest.mark.unit
@pytest.mark.parametrize("quadrant", list(QUADRANTS))
def test_map_peaks_where_the_evidence_is(colour_model, quadrant):
    heat = cam.grad_cam(colour_model, picture(quadrant)[None], class_index=1)[0]
    assert heat.shape == (SIZE, SIZE) and heat.dtype == np.float32
    row, col = np.unravel_index(heat.argmax(), heat.shape)
    rows, cols = QUADRANTS[quadrant]
    assert rows.start <= row < rows.stop and cols.start <= col < cols.stop
    assert heat.max() == pytest.approx(1.0)
    assert quadrant_share(heat, quadrant) > 0.8


@pytest.mark.unit
def test_each_class_points_at_its_own_evidence(colour_model):
    """Red top-left, green bottom-right: class 1 looks top-left, class 0 bottom-right."""
    img = picture("top-left", green="bottom-right")[None]
    red_map = cam.grad_cam(colour_model, img, class_index=1)[0]
    green_map = cam.grad_cam(colour_model, img, class_index=0)[0]
    assert quadrant_share(red_map, "top-left") > 0.8
    assert quadrant_share(green_map, "bottom-right") > 0.8


@pytest.mark.unit
def test_default_class_is_the_predicted_one(colour_model):
    # A saturated softmax (p ~ 1) still gives a map: the score is the logit.
    images = np.stack([picture("top-right"), picture("bottom-left", green="top-left")])
    images[1][QUADRANTS["bottom-left"]] = GREY  # only green evidence left: class 0
    proba = colour_model.predict(images.astype(np.float32), verbose=0)
    assert proba.argmax(axis=1).tolist() == [1, 0] and proba.max() > 0.999
    default = cam.grad_cam(colour_model, images)
    np.testing.assert_allclose(default, cam.grad_cam(colour_model, images, class_index=[1, 0]))
    assert quadrant_share(default[0], "top-right") > 0.8
    assert quadrant_share(default[1], "top-left") > 0.8


@pytest.mark.unit
def test_maps_follow_weights_changed_after_a_first_call():
    model = colour_classifier()
    img = picture("top-left", green="bottom-right")[None]
    assert quadrant_share(cam.grad_cam(model, img, 1)[0], "top-left") > 0.8
    kernel, bias = model.get_layer("head").get_weights()
    model.get_layer("head").set_weights([kernel[:, ::-1], bias])  # class 1 now reads green
    assert quadrant_share(cam.grad_cam(model, img, 1)[0], "bottom-right") > 0.8


@pytest.mark.unit
def test_no_evidence_gives_an_empty_map(colour_model):
    heat = cam.grad_cam(colour_model, picture("top-left")[None], class_index=0)[0]
    assert heat.max() == 0.0  # nothing green anywhere: ReLU keeps no location


@pytest.mark.unit
def test_a_named_layer_inside_the_nested_backbone(colour_model):
    heat = cam.grad_cam(colour_model, picture("bottom-right")[None], 1, layer="block0_conv")[0]
    assert quadrant_share(heat, "bottom-right") > 0.8


@pytest.mark.unit
def test_bad_requests_name_the_fix(colour_model):
    img = picture("top-left")
    with pytest.raises(cam.CamError, match="images\\[None\\]"):
        cam.grad_cam(colour_model, img)
    with pytest.raises(cam.CamError, match="no layer named 'nope'"):
        cam.grad_cam(colour_model, img[None], layer="nope")
    with pytest.raises(cam.CamError, match="out of range"):
        cam.grad_cam(colour_model, img[None], class_index=5)
    with pytest.raises(cam.CamError, match="one per image"):
        cam.grad_cam(colour_model, img[None], class_index=[0, 1])


# ----------------------------------------------------------------------------- real classifier

TINY = tiny_models.backbone("tiny", tiny_models.convnet_builder, "caffe", feature_dim=8)


@pytest.fixture(scope="module")
def tiny_classifier(tmp_path_factory) -> keras.Model:
    """``finetune.build_classifier`` on a tiny registered backbone, saved and loaded back."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(backbones.REGISTRY, "tiny", TINY)
        cfg = FinetuneConfig(backbone="tiny", image_size=tiny_models.SIZE, weights=None, seed=1)
        keras.utils.set_random_seed(1)
        model = build_classifier(cfg)
        path = tmp_path_factory.mktemp("tiny_cam") / "tiny.keras"
        model.save(path)
        return keras.models.load_model(path, compile=False)


def tiny_images(n: int = 3) -> np.ndarray:
    return np.stack(
        [np.asarray(tiny_models.cell(c, seed=c), np.float32)[:32, :32] for c in range(n)]
    )


@pytest.mark.unit
def test_saved_build_classifier_structure(tiny_classifier):
    images = tiny_images()
    heat = cam.grad_cam(tiny_classifier, images)
    assert heat.shape == (3, 32, 32) and heat.dtype == np.float32
    assert heat.min() >= 0.0 and heat.max() <= 1.0
    assert cam._split(tiny_classifier, None).layer_name == "block1_relu"  # last 4-D map
    maps = [cam.grad_cam(tiny_classifier, images, class_index=k) for k in range(len(CLASSES))]
    assert any(not np.allclose(maps[0], other, atol=1e-3) for other in maps[1:])


@pytest.mark.unit
def test_cam_examples_picks_right_and_wrong_cells(tiny_classifier, tmp_path):
    rows = []
    for c, cls in enumerate(CLASSES[:3]):
        for i in range(4):
            path = write_cell(tmp_path / cls / f"{i}.jpg", c, seed=10 * c + i)
            rows.append({"path": str(path), "label": cls})
    frame = pd.DataFrame(rows)
    proba = np.full((len(frame), len(CLASSES)), 0.01)
    truth = np.repeat([0, 1, 2], 4)
    guessed = truth.copy()
    guessed[[1, 2, 5]] = [3, 3, 0]  # three mistakes: two basophils, one eosinophil
    proba[np.arange(len(frame)), guessed] = 0.93
    out = cam.cam_examples(tiny_classifier, frame, proba, CLASSES, image_size=32, per_class=1)
    assert list(out.columns[:6]) == ["path", "label", "predicted", "probability", "correct", "cam"]
    assert out.groupby(["label", "correct"]).size().to_dict() == {
        (CLASSES[0], False): 1,
        (CLASSES[0], True): 1,
        (CLASSES[1], False): 1,
        (CLASSES[1], True): 1,
        (CLASSES[2], True): 1,
    }
    assert (out["correct"] == (out["label"] == out["predicted"])).all()
    assert np.allclose(out["probability"], 0.93)
    assert all(m.shape == (32, 32) and 0 <= m.min() and m.max() <= 1 for m in out["cam"])
    fig = plots.plot_cam_examples(out, "tiny_ft", cols=2)
    assert "tiny_ft" in fig._suptitle.get_text() and len(fig.axes) == 3 * 4
    drawn = [ax for ax in fig.axes if ax.images]
    assert len(drawn) == 2 * len(out)  # each cell as imaged and with its map
    titles = [ax.get_title() for ax in drawn]
    assert titles.count("Grad-CAM") == len(out)
    assert f"{CLASSES[0]} →\n{CLASSES[3]} (0.93)" in titles
    plt.close(fig)
    again = cam.cam_examples(tiny_classifier, frame, proba, CLASSES, image_size=32, per_class=1)
    assert again["path"].tolist() == out["path"].tolist()  # the seed fixes the draw


@pytest.mark.unit
def test_overlay():
    img = np.full((20, 30, 3), 100, np.uint8)
    heat = np.zeros((5, 5), np.float32)
    heat[0, 0] = 1.0
    out = plots.overlay(img, heat, alpha=0.5)
    assert out.shape == (20, 30, 3) and out.dtype == np.uint8
    assert not np.array_equal(out[0, 0], out[-1, -1])  # hot corner differs from the cold one
    assert np.array_equal(plots.overlay(img, heat, alpha=0.0), img)


@pytest.mark.unit
def test_plot_cam_examples_keeps_a_fixed_grid_when_empty():
    empty = pd.DataFrame(columns=["path", "label", "predicted", "probability", "correct", "cam"])
    fig = plots.plot_cam_examples(empty, "m", slots=8)
    assert len(fig.axes) == 16 and not any(ax.images for ax in fig.axes)
    plt.close(fig)


@pytest.mark.data
def test_real_lite0_classifier_on_real_cells(tmp_path):
    """The real structure (Lite0 with its residual blocks, nested twice), saved and loaded."""
    root = dev_dir()
    from bloodlib.data.pipeline import load_images

    paths = [str(sorted((root / cls).glob("*.jpg"))[0]) for cls in CLASSES[:4]]
    path = tmp_path / "lite0.keras"
    build_classifier(FinetuneConfig()).save(path)
    model = keras.models.load_model(path, compile=False)
    heat = cam.grad_cam(model, load_images(paths, 224))
    assert cam._split(model, None).layer_name == "top_activation"
    assert heat.shape == (4, 224, 224) and heat.dtype == np.float32
    assert heat.min() >= 0.0 and heat.max() <= 1.0


@pytest.mark.unit
def test_a_cropping_classifier_maps_only_the_centre_it_sees():
    """With ``crop`` the feature map covers the centre square: the map is placed there,
    zero outside, instead of being stretched over the whole frame."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(backbones.REGISTRY, "tiny", TINY)
        keras.utils.set_random_seed(1)
        cfg = FinetuneConfig(
            backbone="tiny", image_size=tiny_models.SIZE, weights=None, crop=0.5, seed=1
        )
        model = build_classifier(cfg)
    images = tiny_images()
    assert cam._crop_box(model, 32, 32) == (8, 8, 16, 16)
    heat = cam.grad_cam(model, images)
    assert heat.shape == (3, 32, 32)
    inside = np.zeros((32, 32), bool)
    inside[8:24, 8:24] = True
    assert np.all(heat[:, ~inside] == 0.0)
    assert np.all(heat[:, inside].max(axis=1) == 1.0)  # each map normalised to its peak
