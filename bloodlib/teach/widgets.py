"""Interactive browsers for notebooks (ipywidgets), with a static twin for headless runs.

In JupyterLab each function returns a widget. Run headless (papermill, nbval,
``make notebooks``), a widget would only store "a widget was here" in the
committed outputs, so each function returns a static matplotlib figure of the
same content instead, laid out on a fixed grid so that the stored output stays
stable from one run to the next. :func:`headless` is the one switch.
"""

from __future__ import annotations

import html
import io
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import ipywidgets as w
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from bloodlib import IMAGE_SUFFIXES
from bloodlib.core.errors import BloodlibError
from bloodlib.data.pipeline import load_images
from bloodlib.predict.cam import grad_cam
from bloodlib.predict.saliency import finer_layer
from bloodlib.teach import plots

#: Cells a browser draws at most: a screenful, and a fixed grid for the static figure.
MAX_CELLS = 8
#: Figures rendered into widgets: sharp enough on screen, light enough to redraw per click.
WIDGET_DPI = 90


class WidgetError(BloodlibError, ValueError):
    """A browser was called in a way it cannot serve."""


def headless() -> bool:
    """True when ``BLOODLIB_HEADLESS`` is set to anything but empty or "0".

    The runner and the Makefile's notebook targets (``make notebooks``, nbval) set
    it; ``make lab`` clears it. It is the only switch between widgets and their
    static figures.
    """
    return os.environ.get("BLOODLIB_HEADLESS", "") not in ("", "0")


def _static(fig: Any) -> Any:
    """Detach a figure from pyplot so a notebook displays it once (as the returned value)."""

    plt.close(fig)
    return fig


def _png(fig: Any) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=WIDGET_DPI, bbox_inches="tight")
    _static(fig)
    return buf.getvalue()


def _input_size(model: Any, image_size: int | None) -> int:
    if image_size:
        return int(image_size)
    if hasattr(model, "image_size"):  # a bloodlib.predict.engine.Classifier
        return int(model.image_size)
    return int(model.inputs[0].shape[1])


class _Confusions:
    """The cells of a test set by (true, predicted) class, with their maps computed on demand."""

    def __init__(
        self,
        frame: pd.DataFrame,
        proba: Any,
        classes: Sequence[str],
        model: Any,
        image_size: int | None,
        model_name: str,
    ) -> None:
        proba = np.asarray(proba, float)
        if proba.shape != (len(frame), len(classes)):
            raise WidgetError(
                f"proba has shape {proba.shape} for {len(frame)} cells and {len(classes)} "
                "classes; pass the probabilities of exactly these cells, one column per class"
            )
        self.classes = [str(c) for c in classes]
        pred = proba.argmax(axis=1)
        self.table = pd.DataFrame(
            {
                "path": frame["path"].astype(str).to_numpy(),
                "label": frame["label"].astype(str).to_numpy(),
                "predicted": np.asarray(self.classes, dtype=object)[pred],
                "probability": proba[np.arange(len(proba)), pred],
            }
        )
        self.table["correct"] = self.table["label"] == self.table["predicted"]
        self.model = model
        self.size = _input_size(model, image_size) if model is not None else None
        self.model_name = model_name
        self._cams: dict[tuple[str, str], np.ndarray] = {}

    def most_confused(self) -> tuple[str, str]:
        """The (true, predicted) pair with the most mistakes; the largest class without any."""
        wrong = self.table[~self.table["correct"]]
        table = wrong if not wrong.empty else self.table
        counts = table.groupby(["label", "predicted"]).size()
        order = {c: i for i, c in enumerate(self.classes)}
        # Ties go to the pair first in class order: the same pair on every run.
        best = sorted(counts.items(), key=lambda kv: (-kv[1], order[kv[0][0]], order[kv[0][1]]))
        return best[0][0] if best else (self.classes[0], self.classes[0])

    def cells(self, true: str, predicted: str) -> tuple[pd.DataFrame, int]:
        """The most confident ``MAX_CELLS`` cells of the pair (with maps), and how many there are."""
        mine = self.table[(self.table["label"] == true) & (self.table["predicted"] == predicted)]
        shown = mine.sort_values(["probability", "path"], ascending=[False, True]).head(MAX_CELLS)
        shown = shown.reset_index(drop=True)
        if self.model is not None and not shown.empty:
            shown["cam"] = self._maps(shown["path"].tolist(), predicted)
        return shown, len(mine)

    def _maps(self, paths: list[str], predicted: str) -> list[np.ndarray]:

        todo = [p for p in paths if (p, predicted) not in self._cams]
        if todo:
            k = self.classes.index(predicted)
            images = load_images(todo, self.size)
            maps = grad_cam(self.model, images, class_index=k, layer=finer_layer(self.model))
            self._cams.update({(p, predicted): m for p, m in zip(todo, maps, strict=True)})
        return [self._cams[(p, predicted)] for p in paths]

    def figure(self, true: str, predicted: str, note: str = "", static: bool = False) -> Any:

        shown, n = self.cells(true, predicted)
        what = "correct" if true == predicted else "mistaken"
        title = (
            f"{self.model_name + ': ' if self.model_name else ''}{n} {what} cells, "
            f"true {true} → predicted {predicted}"
            f"{f' (the {len(shown)} most confident shown)' if n > len(shown) else ''}{note}"
        )
        # A widget keeps one grid size from click to click; a static figure fits its cells.
        slots = None if static else MAX_CELLS
        return plots.plot_cam_examples(shown, self.model_name, slots=slots, title=title)


def confusion_browser(
    frame: pd.DataFrame,
    proba: Any,
    classes: Sequence[str],
    *,
    model: Any = None,
    image_size: int | None = None,
    model_name: str = "",
) -> Any:
    """Browse the confusion matrix: pick a true and a predicted class, see those cells.

    ``frame``: the test cells (``path``, ``label``); ``proba``: their ``(N, K)`` class
    probabilities in ``classes`` order. With ``model`` (a Keras classifier or a
    ``bloodlib.predict.engine.Classifier``) each cell also shows its Grad-CAM map for the
    predicted class; ``image_size`` defaults to the model's input size.

    Interactive: returns the widget (two dropdowns above the cells). Headless (see
    :func:`headless`): returns a static figure of the most-confused pair.
    """
    data = _Confusions(frame, proba, classes, model, image_size, model_name)
    true, predicted = data.most_confused()
    if headless():
        return _static(data.figure(true, predicted, note="; the most-confused pair", static=True))

    pick_true = w.Dropdown(options=data.classes, value=true, description="true")
    pick_pred = w.Dropdown(options=data.classes, value=predicted, description="predicted")
    picture = w.Image(format="png")

    def update(change: Any = None) -> None:
        picture.value = _png(data.figure(pick_true.value, pick_pred.value))

    pick_true.observe(update, names="value")
    pick_pred.observe(update, names="value")
    update()
    return w.VBox([w.HBox([pick_true, pick_pred]), picture])


def _classify(classifier: Any, path: str | Path, image_size: int | None, name: str) -> Any:
    """The figure for one cell: image, Grad-CAM of the top class (networks only), top 3."""

    size = image_size or classifier.image_size
    proba = classifier.predict_proba([str(path)], progress=False)[0]
    image = load_images([str(path)], size)[0]
    cam = None
    if classifier.info.get("method") != "svm":  # an SVM on pooled features has no map
        top = int(np.argmax(proba))
        cam = grad_cam(classifier.model, image[None], top, layer=finer_layer(classifier.model))[0]
    model_name = Path(classifier.path).stem
    return plots.plot_cell_prediction(
        image, proba, classifier.classes, cam=cam, model_name=model_name, name=name
    )


def classify_cell(
    classifier: Any, *, path: str | Path | None = None, image_size: int | None = None
) -> Any:
    """ "Classify your own cell": upload an image or type a path; see the top 3 and the map.

    ``classifier``: a ``bloodlib.predict.engine.Classifier``. Interactive: returns the widget
    (a file upload and a path box; ``path`` fills the box). Headless: classifies
    ``path`` (required) and returns the static figure.
    """
    if headless():
        if path is None:
            raise WidgetError(
                "classify_cell runs headless on a given cell: pass path=<an image file>"
            )
        return _static(_classify(classifier, path, image_size, Path(path).name))

    upload = w.FileUpload(accept="image/*", multiple=False, description="upload a cell")
    box = w.Text(
        value="",
        placeholder="or type the path of an image and press Enter",
        continuous_update=False,
        layout=w.Layout(width="60%"),
    )
    status = w.HTML()
    picture = w.Image(format="png")

    def show(source: str | Path, name: str) -> None:
        # A callback's exception would vanish into the kernel log: say it on screen instead.
        try:
            picture.value = _png(_classify(classifier, source, image_size, name))
            status.value = ""
        except Exception as err:  # noqa: BLE001 (shown to the user, who can fix the input)
            picture.value = b""
            status.value = (
                f"<span style='color:#b00'>could not classify {html.escape(name)}: "
                f"{html.escape(type(err).__name__)}: {html.escape(str(err))}</span>"
            )

    def on_path(change: Any) -> None:
        if change["new"].strip():
            typed = Path(change["new"].strip()).expanduser()
            show(typed, typed.name)

    def on_upload(change: Any) -> None:
        for item in change["new"]:
            suffix = Path(item["name"]).suffix.lower()
            with tempfile.TemporaryDirectory(prefix="bloodlib-upload-") as tmp:
                target = Path(tmp) / f"upload{suffix if suffix in IMAGE_SUFFIXES else '.img'}"
                target.write_bytes(bytes(item["content"]))
                show(target, item["name"])
        if change["new"]:
            upload.value = ()  # so that the same file uploaded again counts as new

    box.observe(on_path, names="value")
    upload.observe(on_upload, names="value")
    if path is not None:
        box.value = str(path)
    return w.VBox([w.HBox([upload, box]), status, picture])
