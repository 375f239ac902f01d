"""Browsers: static figures when headless, live widgets otherwise (observers called directly)."""

from __future__ import annotations

import datetime

import matplotlib

matplotlib.use("Agg")  # headless; the library itself never forces a backend

import ipywidgets  # noqa: E402
import keras  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
import tiny_models  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from tiny_models import write_cell  # noqa: E402

from bloodlib import CLASSES  # noqa: E402
from bloodlib.models import backbones
from bloodlib.predict.engine import load_classifier
from bloodlib.teach import widgets
from bloodlib.train import finetune
from bloodlib.train.network import build_classifier
from bloodlib.train.recipe import FinetuneConfig

pytestmark = pytest.mark.unit

TINY = tiny_models.backbone("tiny", tiny_models.convnet_builder, "caffe", feature_dim=8)


@pytest.fixture
def live(monkeypatch):
    monkeypatch.delenv("BLOODLIB_HEADLESS", raising=False)


@pytest.fixture
def static(monkeypatch):
    monkeypatch.setenv("BLOODLIB_HEADLESS", "1")


@pytest.fixture(scope="module")
def classifier(tmp_path_factory):
    """A saved ``finetune`` classifier on a tiny backbone, loaded as the notebooks load one."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(backbones.REGISTRY, "tiny", TINY)
        cfg = FinetuneConfig(backbone="tiny", image_size=tiny_models.SIZE, weights=None, seed=1)
        keras.utils.set_random_seed(1)
        path = tmp_path_factory.mktemp("widgets") / "models" / "tiny_ft.keras"
        path.parent.mkdir(parents=True, exist_ok=True)
        finetune.save_model(build_classifier(cfg), cfg, path)
        yield load_classifier(path)


@pytest.fixture(scope="module")
def test_set(tmp_path_factory) -> tuple[pd.DataFrame, np.ndarray]:
    """12 cells of 3 classes; 3 basophils predicted eosinophil, 1 eosinophil predicted basophil."""
    root = tmp_path_factory.mktemp("cells")
    rows = []
    for c, cls in enumerate(CLASSES[:3]):
        for i in range(4):
            rows.append(
                {"path": str(write_cell(root / cls / f"{i}.jpg", c, 10 * c + i)), "label": cls}
            )
    frame = pd.DataFrame(rows)
    guessed = np.repeat([0, 1, 2], 4)
    guessed[[0, 1, 2, 4]] = [1, 1, 1, 0]
    proba = np.full((len(frame), len(CLASSES)), 0.02)
    proba[np.arange(len(frame)), guessed] = np.linspace(0.5, 0.8, len(frame))
    return frame, proba


@pytest.mark.parametrize(
    ("value", "expected"), [(None, False), ("", False), ("0", False), ("1", True), ("yes", True)]
)
def test_headless_switch(monkeypatch, value, expected):
    if value is None:
        monkeypatch.delenv("BLOODLIB_HEADLESS", raising=False)
    else:
        monkeypatch.setenv("BLOODLIB_HEADLESS", value)
    assert widgets.headless() is expected


def overlays(fig: Figure) -> int:
    return sum(ax.get_title() == "Grad-CAM" and bool(ax.images) for ax in fig.axes)


def test_static_browser_shows_the_most_confused_pair(static, test_set, classifier):
    frame, proba = test_set
    fig = widgets.confusion_browser(frame, proba, CLASSES, model_name="tiny_ft")
    assert isinstance(fig, Figure)
    assert "3 mistaken cells, true basophil → predicted eosinophil" in fig._suptitle.get_text()
    assert "tiny_ft" in fig._suptitle.get_text()
    assert sum(bool(ax.images) for ax in fig.axes) == 3 and overlays(fig) == 0
    with_maps = widgets.confusion_browser(frame, proba, CLASSES, model=classifier.model)
    assert overlays(with_maps) == 3
    # The static figure fits its cells (no empty panels); notebook 04 does not compare it.
    assert len(with_maps.axes) == len(fig.axes) == 2 * 3


def test_without_mistakes_the_largest_class_is_shown(static, test_set):
    frame, _ = test_set
    perfect = np.eye(len(CLASSES))[np.repeat([0, 1, 2], 4)]
    fig = widgets.confusion_browser(frame, perfect, CLASSES)
    assert "4 correct cells, true basophil → predicted basophil" in fig._suptitle.get_text()


def test_live_browser_updates_on_a_new_choice(live, test_set, classifier):
    frame, proba = test_set
    box = widgets.confusion_browser(frame, proba, CLASSES, model=classifier, model_name="tiny")
    assert isinstance(box, ipywidgets.VBox)
    pick_true, pick_pred = box.children[0].children
    picture = box.children[1]
    assert (pick_true.value, pick_pred.value) == ("basophil", "eosinophil")
    first = bytes(picture.value)
    assert first.startswith(b"\x89PNG")
    pick_true.value = "eosinophil"  # traitlets call the observer at once
    assert bytes(picture.value).startswith(b"\x89PNG") and bytes(picture.value) != first


def test_static_classify_cell(static, classifier, test_set):
    frame, _ = test_set
    fig = widgets.classify_cell(classifier, path=frame["path"][0])
    assert isinstance(fig, Figure) and len(fig.axes) == 3  # image, map, top 3
    bars = fig.axes[-1]
    assert len(bars.patches) == 3
    top = max(bars.patches, key=lambda p: p.get_width())
    proba = classifier.predict_proba([frame["path"][0]], progress=False)[0]
    assert top.get_width() == pytest.approx(proba.max(), abs=1e-5)
    assert CLASSES[int(proba.argmax())] in fig._suptitle.get_text()
    with pytest.raises(widgets.WidgetError, match="path="):
        widgets.classify_cell(classifier)


def test_live_classify_cell_path_and_upload(live, classifier, test_set, tmp_path):
    frame, _ = test_set
    box = widgets.classify_cell(classifier, path=frame["path"][5])
    upload, text = box.children[0].children
    status, picture = box.children[1:]
    assert text.value == frame["path"][5]
    assert bytes(picture.value).startswith(b"\x89PNG") and status.value == ""

    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not an image")
    text.value = str(broken)
    assert "could not classify broken.jpg" in status.value and bytes(picture.value) == b""

    upload.value = (
        {
            "name": "mine.jpg",
            "type": "image/jpeg",
            "size": 0,
            "content": memoryview(open(frame["path"][5], "rb").read()),
            "last_modified": datetime.datetime(2026, 1, 1, tzinfo=datetime.timezone.utc),
        },
    )
    assert status.value == "" and bytes(picture.value).startswith(b"\x89PNG")
