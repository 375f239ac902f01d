"""Figures of bloodlib.teach.plots: right structure, no crash on edge cases, PNGs written."""

from __future__ import annotations

import os

import matplotlib

matplotlib.use("Agg")  # headless; the library itself never forces a backend

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from PIL import Image  # noqa: E402

from bloodlib import CLASSES
from bloodlib.evaluate.calibration import calibration_bins, softmax
from bloodlib.evaluate.compare import comparison_table
from bloodlib.evaluate.metrics import evaluate
from bloodlib.evaluate.mistakes import misclassified
from bloodlib.teach import plots

pytestmark = pytest.mark.unit

K = len(CLASSES)


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


@pytest.fixture(scope="module")
def image_table(tmp_path_factory) -> pd.DataFrame:
    """Tiny synthetic JPEGs, 3 per class, plus one excluded row per class."""
    root = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    rows = []
    for c, cls in enumerate(CLASSES):
        for i in range(4):
            path = root / cls / f"{cls}_{i}.jpg"
            path.parent.mkdir(exist_ok=True)
            colour = rng.integers(0, 256, size=3)
            arr = np.clip(colour + rng.normal(0, 20, size=(24, 24, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(arr).save(path, quality=80)
            rows.append(
                {
                    "relpath": f"{cls}/{path.name}",
                    "path": str(path),
                    "label": cls,
                    "width": 24 + c,
                    "height": 24,
                    "status": "ok" if i < 3 else "too_small",
                    "mean_r": float(arr[..., 0].mean()),
                    "mean_g": float(arr[..., 1].mean()),
                    "mean_b": float(arr[..., 2].mean()),
                    "brightness": float(arr.mean()),
                }
            )
    return pd.DataFrame(rows)


@pytest.fixture(scope="module")
def preds() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(1)
    y = rng.integers(0, K, size=300)
    z = 2 * rng.normal(size=(300, K)) + 4 * np.eye(K)[y]
    return y, softmax(z)


def _save(fig: Figure, path) -> int:
    """Render through save_figure at a low dpi and return the file size.

    Drawing costs ~1 s of CPU per figure, so only figures with hand-placed
    artists (galleries, annotations, symlog axes) are rendered here.
    """
    return plots.save_figure(fig, path, dpi=40).stat().st_size


def _titles(fig: Figure) -> list[str]:
    return [ax.get_title() for ax in fig.axes if ax.get_title()]


def test_save_figure_writes_png_atomically(tmp_path):
    fig, ax = plt.subplots()
    ax.plot([0, 1], [0, 1])
    out = plots.save_figure(fig, tmp_path / "nested" / "dir" / "line.png")
    assert out.exists() and out.stat().st_size > 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in out.parent.iterdir()) == ["line.png"]  # no temp file left
    umask = os.umask(0)
    os.umask(umask)
    assert out.stat().st_mode & 0o777 == 0o666 & ~umask  # not mkstemp's private 0600
    plots.save_figure(fig, out)  # overwriting works
    pdf = plots.save_figure(fig, tmp_path / "line.pdf")
    assert pdf.read_bytes()[:4] == b"%PDF"


def test_class_distribution(image_table, tmp_path):
    fig = plots.plot_class_distribution(image_table)
    assert isinstance(fig, Figure) and len(fig.axes) == 1
    assert "8 excluded" in fig.axes[0].get_title()
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == list(CLASSES)


def test_examples_grid(image_table):
    fig = plots.plot_examples(image_table, per_class=4, seed=0)
    assert len(fig.axes) == K * 4
    assert [fig.axes[4 * r].get_ylabel() for r in range(K)] == list(CLASSES)
    # Three usable images per class: the fourth column stays empty.
    assert len(fig.axes[0].images) == 1 and len(fig.axes[3].images) == 0


def test_size_colour(image_table, tmp_path):
    table = image_table.copy()
    if table["width"].nunique() == 1:  # sizes that differ: four panels
        table.loc[table.index[0], "width"] += 1
    fig = plots.plot_size_colour(table)
    assert len(fig.axes) == 4
    assert len(_titles(fig)) == 4
    # One size for every image (the sample): no flat size panels, the size in the title
    same = table.assign(width=160, height=160)
    fig = plots.plot_size_colour(same)
    assert len(fig.axes) == 2 and "every one 160 × 160 px" in fig._suptitle.get_text()


def test_split(tmp_path):
    rng = np.random.default_rng(2)
    split_df = pd.DataFrame(
        {
            "label": rng.choice(CLASSES, size=200),
            "split": rng.choice(["test", "train", "val"], size=200, p=[0.2, 0.6, 0.2]),
        }
    )
    fig = plots.plot_split(split_df)
    assert len(fig.axes) == 2
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["train", "val", "test"]


@pytest.mark.parametrize("normalize", [False, True])
def test_confusion(preds, normalize, tmp_path):
    y, p = preds
    m = evaluate(y, p, CLASSES, n_boot=0)
    fig = plots.plot_confusion(m["confusion"], CLASSES, normalize=normalize, title="T")
    assert len(fig.axes) == 2  # heatmap + colour bar
    assert fig.axes[0].get_title() == "T"
    assert len(fig.axes[0].texts) == K * K  # every cell annotated


def test_confusion_missing_class_row():
    cm = np.eye(3, dtype=int) * 5
    cm[1, 1] = 0  # class b absent from the test set: its normalised row is blank
    fig = plots.plot_confusion(cm, ["a", "b", "c"], normalize=True)
    assert "n=10" in fig.axes[0].get_title()


def test_confusions_side_by_side(preds):
    y, p = preds
    fig = plots.plot_confusions(evaluate(y, p, CLASSES, n_boot=0)["confusion"], CLASSES)
    assert len(fig.axes) == 4  # two heatmaps, two colour bars
    assert _titles(fig) == ["Counts", "Row-normalised (% of true class)"]


def test_roc(preds, tmp_path):
    y, p = preds
    fig = plots.plot_roc(y, p, CLASSES, model_name="net")
    assert len(fig.axes) == 1  # macro AUC 0.93: the curves would leave a top-left zoom
    labels = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert len(labels) == K and all("AUC" in s for s in labels)
    title = fig.axes[0].get_title()
    assert title.startswith("net: ") and "macro AUC" in title and "n=300" in title
    # A class absent from y_true is skipped, not a crash.
    fig = plots.plot_roc(np.where(y == 3, 0, y), p, CLASSES)
    assert len(fig.axes[0].get_legend().get_texts()) == K - 1
    # >= 20 positives per class and a macro AUC >= 0.95: the zoom is drawn.
    sharp = softmax(np.log(p) + 4 * np.eye(K)[y])
    fig = plots.plot_roc(y, sharp, CLASSES)
    assert len(fig.axes) == 2 and fig.axes[1].get_xlim() == (0, 0.2)


def test_roc_without_zoom_for_few_positives(preds):
    y, p = preds
    keep = np.concatenate([np.flatnonzero(y == c)[:6] for c in range(K)])  # 6 per class
    fig = plots.plot_roc(y[keep], p[keep], CLASSES, model_name="net")
    assert len(fig.axes) == 1
    assert ">= 6 per class" in fig.axes[0].get_title()


def test_reliability(preds, tmp_path):
    y, p = preds
    fig = plots.plot_reliability(y, p, model_name="net")
    assert len(fig.axes) == 2
    legend = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert any("ECE" in s for s in legend)
    assert fig.axes[0].get_title().startswith("net: ")
    assert "15 bins" in fig.axes[0].get_title()  # 300 images: the full 15 bins
    fig = plots.plot_reliability(y, p, softmax(np.log(p), temperature=0.7), n_bins=10)
    legend = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert sum("ECE" in s for s in legend) == 2
    assert _save(fig, tmp_path / "rel.png") > 0


def test_reliability_bins_fit_a_small_test_set(preds):
    y, p = preds
    fig = plots.plot_reliability(y[:48], p[:48])
    title = fig.axes[0].get_title()
    assert f"{calibration_bins(48)} bins" in title and "n=48" in title
    assert len(fig.axes[1].patches) == calibration_bins(48)  # one histogram bar per bin


def test_misclassified_gallery(image_table, tmp_path):
    usable = image_table[image_table["status"] == "ok"].reset_index(drop=True)
    y = np.array([CLASSES.index(c) for c in usable["label"]])
    rng = np.random.default_rng(3)
    p = softmax(rng.normal(size=(len(y), K)))  # random guesses: mostly wrong
    df = misclassified(y, p.argmax(1), p, usable["path"], CLASSES)
    fig = plots.plot_misclassified(df, CLASSES, n=10, cols=4)
    assert len(fig.axes) == 12  # 3 rows x 4 columns, two left blank
    titles = _titles(fig)
    assert len(titles) == 10 and all("→" in t for t in titles)
    # Missing files are drawn as placeholders.
    fig = plots.plot_misclassified(df.assign(path="/nonexistent.jpg"), CLASSES, n=2)
    assert len(_titles(fig)) == 2


def test_misclassified_empty():
    empty = misclassified([0, 1], [0, 1], np.eye(2), ["a.jpg", "b.jpg"], ["a", "b"])
    fig = plots.plot_misclassified(empty, ["a", "b"])
    assert len(fig.axes) == 1
    assert any("no errors" in t.get_text() for t in fig.axes[0].texts)


def test_learning_curves_with_phases(tmp_path):
    # Two fit() calls logged to one CSV: epochs restart at 0 in the second phase.
    history = pd.DataFrame(
        {
            "epoch": [0, 1, 2, 0, 1, 2, 3],
            "loss": [1.5, 1.0, 0.8, 0.6, 0.4, 0.3, 0.25],
            "accuracy": [0.5, 0.65, 0.7, 0.8, 0.86, 0.9, 0.92],
            "val_loss": [1.2, 0.9, 0.85, 0.6, 0.5, 0.45, 0.47],
            "val_accuracy": [0.6, 0.7, 0.72, 0.82, 0.88, 0.88, 0.87],
            "phase": ["head"] * 3 + ["finetune"] * 4,
        }
    )
    fig = plots.plot_learning_curves(history, model_name="net")
    assert len(fig.axes) == 2
    assert _titles(fig) == ["Loss", "Accuracy"]
    assert fig.get_suptitle() == "net: learning curves"
    legend = [t.get_text() for t in fig.axes[1].get_legend().get_texts()]
    assert "phase: head (3 epochs)" in legend and "phase: finetune (4 epochs)" in legend
    # Epochs as Keras prints them: 1..7, so the phase change sits between 3 and 4.
    assert fig.axes[0].lines[0].get_xdata().tolist() == [1, 2, 3, 4, 5, 6, 7]
    for ax in fig.axes:
        vlines = [ln for ln in ax.lines if ln.get_linestyle() == ":"]
        assert len(vlines) == 1 and vlines[0].get_xdata()[0] == pytest.approx(3.5)
    # The checkpoint keeps the first epoch with the highest val_accuracy: epoch 5, not the
    # epoch of lowest val_loss (6).
    stars = [ln for ln in fig.axes[1].lines if ln.get_marker() == "*"]
    assert len(stars) == 1 and stars[0].get_xdata()[0] == 5
    assert any("epoch 5" in t for t in legend)
    assert not [ln for ln in fig.axes[0].lines if ln.get_marker() == "*"]
    assert _save(fig, tmp_path / "lc.png") > 0


def test_learning_curves_of_one_run_number_epochs_from_one():
    history = pd.DataFrame(
        {"epoch": [0, 1, 2], "loss": [1.0, 0.7, 0.5], "val_accuracy": [0.5, 0.9, 0.6]}
    )
    fig = plots.plot_learning_curves(history, monitor="val_loss", mode="min")
    assert fig.axes[0].lines[0].get_xdata().tolist() == [1, 2, 3]
    assert not [ln for ln in fig.axes[0].lines if ln.get_marker() == "*"]  # val_loss not logged
    fig = plots.plot_learning_curves(history)
    stars = [ln for ln in fig.axes[1].lines if ln.get_marker() == "*"]
    assert stars[0].get_xdata()[0] == 2


def test_learning_curves_without_phase_or_validation():
    history = pd.DataFrame({"epoch": [0, 1, 2], "loss": [1.0, 0.7, 0.5]})
    fig = plots.plot_learning_curves(history)
    assert len(fig.axes) == 2
    assert any("no accuracy" in t.get_text() for t in fig.axes[1].texts)


def test_comparison(tmp_path):
    table = comparison_table(
        [
            {
                "name": "VGG16 + SVM",
                "backbone": "vgg16",
                "method": "svm",
                "test_accuracy": 0.87,
                "balanced_accuracy": 0.86,
                "accuracy_ci95": [0.85, 0.89],
            },
            {
                "name": "Inception + FT",
                "backbone": "inception_v3",
                "method": "finetune",
                "test_accuracy": 0.96,
                "balanced_accuracy": 0.95,
                "accuracy_ci95": [0.95, 0.97],
            },
            {
                "name": "new",
                "backbone": "x",
                "method": "y",
                "test_accuracy": 0.97,
                "balanced_accuracy": 0.97,
                "accuracy_ci95": [0.96, 0.98],
            },
        ]  # fmt: skip
    )
    fig = plots.plot_comparison(table)
    assert len(fig.axes) == 1
    ax = fig.axes[0]
    assert len(ax.patches) == 3
    legend = [t.get_text() for t in fig.legends[0].get_texts()]
    assert any("Acevedo" in s for s in legend)
    assert _save(fig, tmp_path / "cmp.png") > 0
    # Without paper numbers or CIs it still draws.
    fig = plots.plot_comparison(comparison_table([{"name": "a", "test_accuracy": 0.9}], None))
    assert len(fig.axes[0].patches) == 1
    assert "Smoke test" not in fig.axes[0].get_title()


def test_comparison_on_the_sample_says_smoke_test():
    table = comparison_table([{"name": "a", "test_accuracy": 0.6, "n_test": 48}], None)
    title = plots.plot_comparison(table, smoke_test=True).axes[0].get_title()
    assert title.startswith("Smoke test on the embedded sample, 48 test cells")
    assert "not a result" in title


def test_misclassified_names_its_model(image_table):
    usable = image_table[image_table["status"] == "ok"].reset_index(drop=True)
    y = np.array([CLASSES.index(c) for c in usable["label"]])
    p = softmax(np.random.default_rng(3).normal(size=(len(y), K)))
    df = misclassified(y, p.argmax(1), p, usable["path"], CLASSES)
    fig = plots.plot_misclassified(df, CLASSES, n=4, model_name="net")
    assert fig.get_suptitle().startswith("net: most confident mistakes")
    shared = df.assign(n_wrong=3, n_models=3)
    fig = plots.plot_misclassified(shared, CLASSES, n=4, model_name="net")
    assert "shared by seeds" in fig.get_suptitle()
    assert all(t.endswith(", 3/3)") for t in _titles(fig))


def test_augmentations_and_learning_rate(tmp_path):
    rng = np.random.default_rng(0)
    cell = rng.uniform(0, 255, (16, 16, 3))
    fig = plots.plot_augmentations(cell, [np.rot90(cell, k) for k in range(1, 8)])
    assert len(fig.axes) == 10 and _titles(fig)[:2] == ["original", "copy 1"]
    assert sum(bool(ax.images) for ax in fig.axes) == 8
    curve = pd.DataFrame(
        {
            "step": range(6),
            "epochs": np.arange(6) / 2,
            "phase": ["head"] * 2 + ["fine-tune"] * 4,
            "learning_rate": [1e-2, 1e-2, 1e-3, 8e-4, 4e-4, 1e-4],
        }
    )
    fig = plots.plot_learning_rate(curve, model_name="net")
    ax = fig.axes[0]
    assert ax.get_title() == "net: learning rate per optimizer step (6 steps)"
    vlines = [ln for ln in ax.lines if ln.get_linestyle() == ":"]
    assert len(vlines) == 1 and vlines[0].get_xdata()[0] == pytest.approx(1.0)


def test_bootstrap_histogram():
    boot = np.random.default_rng(0).binomial(48, 0.75, size=200) / 48
    fig = plots.plot_bootstrap(boot, 0.75, (0.625, 0.875), model_name="net")
    ax = fig.axes[0]
    assert ax.get_title() == "net: bootstrap distribution of the test accuracy"
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert "95% interval 0.625 to 0.875" in legend and "test accuracy 0.750" in legend
    assert sum(bar.get_height() for bar in ax.containers[0]) == 200
