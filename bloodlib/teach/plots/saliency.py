"""Where the network looks (notebook 04): Grad-CAM maps over the cells, the two sanity checks
of :mod:`bloodlib.predict.saliency`, and one cell's prediction with its map."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import matplotlib.pyplot as plt
import matplotlib.ticker
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure
from PIL import Image

from bloodlib.teach.plots.common import STYLE, THUMB, overlay


def _cam_pixels(row: pd.Series) -> np.ndarray | None:
    """The pixels a map is of: the row's ``image``, else its file at the map's size."""
    image = row.get("image")
    if image is not None and np.ndim(image) == 3:
        return np.asarray(image)
    cam = row.get("cam")
    size = np.shape(cam)[1::-1] if np.ndim(cam) == 2 else (THUMB, THUMB)
    try:
        with Image.open(row["path"]) as im:
            return np.asarray(im.convert("RGB").resize(size, Image.BILINEAR))
    except (OSError, ValueError, TypeError):
        return None


def plot_cam_examples(
    examples: pd.DataFrame,
    model_name: str,
    *,
    cols: int = 4,
    slots: int | None = None,
    title: str | None = None,
) -> Figure:
    """Each cell twice, as imaged and with its Grad-CAM map, titled true → predicted (p).

    ``examples`` comes from :func:`bloodlib.predict.cam.cam_examples` (``path, label, predicted,
    probability, correct``, and ``cam``/``image`` where known; a cell without a map is
    drawn without its overlay). ``slots`` fixes the grid (unused slots stay blank), so a
    figure's size does not depend on how many cells there were. Titles are green for
    correct, red for wrong predictions.
    """

    n = max(len(examples), slots or 0, 1)
    cols = max(1, min(cols, n))
    n_rows = math.ceil(n / cols)
    fig, axes = plt.subplots(
        n_rows,
        2 * cols,
        figsize=(2.9 * cols, 1.75 * n_rows + 0.6),
        squeeze=False,
        layout="constrained",
    )
    for ax in axes.flat:
        ax.axis("off")
    if examples.empty:
        axes[0, 0].text(0.0, 0.5, "no cells to show", va="center", fontsize=11)
    for k, (_, row) in enumerate(examples.iterrows()):
        ax_img, ax_cam = axes[k // cols, 2 * (k % cols)], axes[k // cols, 2 * (k % cols) + 1]
        pixels = _cam_pixels(row)
        if pixels is None:
            ax_img.text(0.5, 0.5, "missing", ha="center", va="center", transform=ax_img.transAxes)
            continue
        ax_img.imshow(pixels.astype(np.uint8))
        colour = "tab:green" if bool(row.get("correct", row["label"] == row["predicted"])) else "C3"
        ax_img.set_title(
            f"{row['label']} →\n{row['predicted']} ({row['probability']:.2f})",
            fontsize=8,
            color=colour,
        )
        cam = row.get("cam")
        if cam is not None and np.ndim(cam) == 2:
            ax_cam.imshow(overlay(pixels, cam))
            ax_cam.set_title("Grad-CAM", fontsize=8)
    fig.suptitle(
        title
        or f"{model_name}: where the network looks (Grad-CAM; true → predicted (p), red = wrong)"
    )
    return fig


def plot_saliency_checks(
    check: Mapping[str, Any],
    deletion: Mapping[str, Any],
    images: Any,
    model_name: str,
    *,
    n_show: int = 3,
) -> Figure:
    """The two sanity checks of :mod:`bloodlib.predict.saliency`, side by side.

    Left, for ``n_show`` cells: the cell, the trained network's map, the randomised network's
    map. Right: the deletion curves (class probability against the share of pixels removed),
    salient pixels first against a random order, each cell thin and their mean thick.
    """

    images = np.asarray(images)
    n_show = max(1, min(n_show, len(images)))
    fig = plt.figure(figsize=(10.5, 1.9 * n_show + 0.7), layout="constrained")
    grid = fig.add_gridspec(n_show, 4, width_ratios=(1, 1, 1, 2.4))
    rho = np.asarray(check["rank_correlation"])
    for i in range(n_show):
        pixels = np.clip(images[i], 0, 255).astype(np.uint8)
        panels = (
            (pixels, "cell"),
            (overlay(pixels, check["trained"][i]), "trained"),
            (overlay(pixels, check["randomised"][i]), f"randomised (ρ = {rho[i]:.2f})"),
        )
        for j, (picture, label) in enumerate(panels):
            ax = fig.add_subplot(grid[i, j])
            ax.imshow(picture)
            ax.set_title(label, fontsize=8)
            ax.axis("off")
    ax = fig.add_subplot(grid[:, 3])
    steps = np.asarray(deletion["fractions"])
    for key, colour, label in (
        ("salient", "C3", "most salient first"),
        ("random", "0.45", "random order"),
    ):
        curves = np.asarray(deletion[key])
        for curve in curves:
            ax.plot(steps, curve, color=colour, alpha=0.15, lw=0.8)
        mean_auc = deletion[f"mean_auc_{key}"]
        ax.plot(
            steps, curves.mean(axis=0), color=colour, lw=2.5, label=f"{label} (area {mean_auc:.2f})"
        )
    ax.set(
        xlabel="share of the pixels removed",
        ylabel="probability of the predicted class",
        ylim=(0, 1.02),
        title=f"Deletion test, {len(np.asarray(deletion['salient']))} cells",
    )
    ax.xaxis.set_major_formatter(matplotlib.ticker.PercentFormatter(1.0))
    ax.legend(loc="upper right", fontsize=8)
    fig.suptitle(f"{model_name}: are the maps evidence? (randomisation check, deletion test)")
    return fig


def plot_cell_prediction(
    image: Any,
    proba: Any,
    classes: Sequence[str],
    *,
    cam: Any = None,
    model_name: str = "",
    top: int = 3,
    name: str = "",
) -> Figure:
    """One cell: the image, its Grad-CAM map for the top class (if given), the top classes.

    ``image``: (H, W, 3) pixels 0..255; ``proba``: the cell's class probabilities in
    ``classes`` order; ``name``: how to call the cell in the title (e.g. its file name).
    """

    proba = np.asarray(proba, float)
    order = np.argsort(-proba, kind="stable")[: max(1, top)]
    pixels = np.clip(np.asarray(image, np.float32), 0, 255).astype(np.uint8)
    panels = 3 if cam is not None else 2
    with sns.axes_style(STYLE):
        fig, axes = plt.subplots(
            1,
            panels,
            figsize=(3.0 * panels + 1.0, 3.0),
            layout="constrained",
            width_ratios=[1] * (panels - 1) + [1.4],
        )
    axes[0].imshow(pixels)
    axes[0].set_title(name or "cell", fontsize=9)
    if cam is not None:
        axes[1].imshow(overlay(pixels, cam))
        axes[1].set_title(f"Grad-CAM for {classes[order[0]]}", fontsize=9)
    for ax in axes[:-1]:
        ax.axis("off")
    bars = axes[-1]
    labels = [str(classes[i]) for i in order][::-1]
    bars.barh(labels, proba[order][::-1], color=["C0"] * (len(order) - 1) + ["C2"])
    bars.set_xlim(0, 1)
    bars.set_xlabel("probability")
    bars.bar_label(bars.containers[0], fmt="{:.2f}", fontsize=8, padding=2)
    bars.set_title(f"top {len(order)}", fontsize=9)
    fig.suptitle(
        f"{model_name + ': ' if model_name else ''}{classes[order[0]]} ({proba[order[0]]:.2f})"
    )
    return fig
