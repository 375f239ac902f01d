"""Figures of notebook 02: the feature space in two dimensions, and accuracy against compute."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import matplotlib.pyplot as plt
import matplotlib.ticker
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure
from sklearn.decomposition import PCA
from sklearn.manifold import TSNE
from sklearn.preprocessing import StandardScaler

from bloodlib import CLASSES
from bloodlib.core import paper
from bloodlib.core.config import DEFAULT_SEED
from bloodlib.models.svm import signed_sqrt
from bloodlib.teach.plots.common import (
    STYLE,
)


def plot_accuracy_vs_compute(table: pd.DataFrame, title: str = "") -> Figure:
    """Design 1 per backbone: test accuracy (95% bootstrap interval as error bars) against
    GMACs per image, each point labelled, with the paper's design-1 accuracies as dashed
    reference lines (different data and split: a landmark, not a target).

    ``table``: :func:`bloodlib.train.design1.backbone_table` (columns ``backbone``,
    ``image_size``, ``gmacs``, ``test_accuracy``, ``test_ci_low``, ``test_ci_high``).
    A backbone without a GMACs count is left out of the plot (it has no x).
    """

    rows = table.dropna(subset=["gmacs"])
    with sns.axes_style(STYLE):
        fig, ax = plt.subplots(figsize=(7, 4.2), layout="constrained")
    acc = rows["test_accuracy"].to_numpy(float)
    err = np.vstack(
        [acc - rows["test_ci_low"].to_numpy(float), rows["test_ci_high"].to_numpy(float) - acc]
    )
    ax.errorbar(
        rows["gmacs"].to_numpy(float),
        acc,
        yerr=np.clip(err, 0, None),
        fmt="o",
        color="C0",
        ecolor="C0",
        capsize=4,
        label="test accuracy, 95% interval",
    )
    for row in rows.itertuples():
        ax.annotate(
            f"{row.backbone} ({row.image_size} px)",
            (row.gmacs, row.test_accuracy),
            textcoords="offset points",
            xytext=(6, 4),
            fontsize=8,
        )
    for i, name in enumerate(paper.BACKBONES):
        reported = paper.ACCURACY.get((name, "svm"))
        if reported is not None:
            ax.axhline(
                reported,
                color=f"C{i + 1}",
                ls="--",
                lw=1,
                label=f"paper, {paper.BACKBONE_NAMES.get(name, name)} + SVM ({reported:.0%})",
            )
    ax.set_xlabel("GMACs per image at the size used")
    ax.set_ylabel("test accuracy")
    ax.yaxis.set_major_formatter(matplotlib.ticker.PercentFormatter(1.0))
    if len(rows):
        ax.set_xlim(0, float(rows["gmacs"].max()) * 1.35)
    ax.legend(fontsize=8, loc="lower right")
    ax.set_title(title or "Design 1 per backbone: accuracy against compute")
    return fig


@dataclass
class Projection:
    coords: np.ndarray  # (n, 2)
    method: str
    explained: tuple[float, float] | None  # PCA: variance share of the two axes


def project(X: np.ndarray, method: str = "pca", seed: int = DEFAULT_SEED) -> Projection:
    """Project ``X`` (n, d) to 2-D after the SVM's own scaling (signed square root, then
    standardisation), so the picture shows the space the SVM works in.

    ``pca``: the two directions of largest variance (linear, fast, axes interpretable).
    ``tsne``: a non-linear map that keeps neighbours together (slower; distances between
    clusters mean little).
    """

    Z = StandardScaler().fit_transform(signed_sqrt(np.asarray(X, dtype=np.float64)))
    if method == "pca":
        pca = PCA(n_components=2, random_state=seed).fit(Z)
        coords = pca.transform(Z)
        # PCA's sign is arbitrary: fix it so the picture does not flip between versions.
        coords *= np.where(pca.components_.sum(axis=1) < 0, -1.0, 1.0)
        r = pca.explained_variance_ratio_
        return Projection(coords, "pca", (float(r[0]), float(r[1])))
    if method == "tsne":
        perplexity = float(min(30, max(5, (len(Z) - 1) // 4)))
        coords = TSNE(2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(Z)
        return Projection(coords, "tsne", None)
    raise ValueError(f"method must be 'pca' or 'tsne', not {method!r}")


def plot_projection(
    projection: Projection, labels: Sequence[str], title: str, classes: Sequence[str] = CLASSES
):
    """Scatter of the 2-D projection, one colour per class, with a legend outside."""

    labels = np.asarray(labels)
    palette = sns.color_palette("tab10", len(classes))
    with sns.axes_style("whitegrid"):
        fig, ax = plt.subplots(figsize=(7.5, 5.5), layout="constrained")
        for colour, name in zip(palette, classes, strict=True):
            mask = labels == name
            if mask.any():
                ax.scatter(*projection.coords[mask].T, s=18, alpha=0.8, color=colour, label=name)
        if projection.method == "pca" and projection.explained:
            ax.set_xlabel(f"PC 1 ({100 * projection.explained[0]:.1f} % of variance)")
            ax.set_ylabel(f"PC 2 ({100 * projection.explained[1]:.1f} % of variance)")
        else:
            ax.set_xlabel("t-SNE 1")
            ax.set_ylabel("t-SNE 2")
        ax.set_title(title)
        fig.legend(loc="outside right upper")
    return fig
