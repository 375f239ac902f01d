"""Figures of notebook 05: another lab's cells beside PBC's, their statistics, and the remedies."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure

from bloodlib.teach.plots.common import STYLE, image_axis, thumbnail

#: Colours of the two labs in every figure of the notebook.
LAB_COLOURS = ("#4c72b0", "#dd8452")


#: Adapting with the lab's unlabelled cells as well (seaborn's third "deep" colour).
UNLABELLED_COLOUR = "#55a868"


def plot_predicted_instead(table: pd.DataFrame, title: str = "") -> Figure:
    """Stacked bars: for each true class of the lab, what the model called its cells.

    ``table``: counts, true class (rows) x predicted class (columns), as
    ``domain.predictions_instead`` returns it.
    """
    share = table.div(table.sum(axis=1).replace(0, 1), axis=0) * 100
    colours = sns.color_palette("tab10", len(table.columns))
    with sns.axes_style(STYLE):
        fig, ax = plt.subplots(figsize=(8, 0.6 * len(table) + 1.8), layout="constrained")
        left = np.zeros(len(share))
        for colour, c in zip(colours, share.columns, strict=True):
            ax.barh(share.index, share[c], left=left, color=colour, label=c)
            left += share[c].to_numpy()
        ax.invert_yaxis()
        ax.set_xlim(0, 100)
        ax.set_xlabel("% of the true class's cells")
        ax.set_ylabel("true class (other lab)")
        ax.legend(title="predicted", bbox_to_anchor=(1.01, 1), loc="upper left", fontsize=8)
        ax.set_title(title or "What the PBC model calls the other lab's cells")
    return fig


def plot_confusion_rect(table: pd.DataFrame, title: str = "") -> Figure:
    """Counts of true class (the lab's classes) x predicted class (all the model's classes)."""
    with sns.axes_style("white"):
        fig, ax = plt.subplots(
            figsize=(0.8 * len(table.columns) + 2.5, 0.6 * len(table) + 2), layout="constrained"
        )
        sns.heatmap(
            table,
            annot=True,
            fmt="d",
            cmap="Blues",
            linewidths=0.5,
            cbar=False,
            ax=ax,
            annot_kws={"fontsize": 8},
        )
        ax.set_xlabel("predicted class")
        ax.set_ylabel("true class")
        ax.tick_params(axis="x", labelrotation=45)
        ax.tick_params(axis="y", labelrotation=0)  # seaborn's vertical names overlap the rows
        n = int(table.to_numpy().sum())
        ax.set_title(title or f"Other lab, all classes allowed (n={n})")
    return fig


def plot_lab_statistics(stats: Mapping[str, pd.DataFrame]) -> Figure:
    """Box plots per lab: CIELAB L*, a*, b* means and the nucleus's share of the frame."""
    panels = [
        ("L", "L* (lightness)"),
        ("a", "a* (green to red)"),
        ("b", "b* (blue to yellow)"),
        ("nucleus_fraction", "nucleus diameter / frame side"),
    ]
    names = list(stats)
    with sns.axes_style(STYLE):
        fig, axes = plt.subplots(
            1, len(panels), figsize=(3.2 * len(panels), 3.6), layout="constrained"
        )
        for ax, (col, label) in zip(axes, panels, strict=True):
            data = [stats[n][col].dropna().to_numpy() for n in names]
            box = ax.boxplot(data, patch_artist=True, widths=0.6, showfliers=False)
            for patch, colour in zip(box["boxes"], LAB_COLOURS, strict=False):
                patch.set_facecolor(colour)
                patch.set_alpha(0.6)
            ax.set_xticks(range(1, len(names) + 1), names)
            ax.set_title(label, fontsize=10)
        fig.suptitle("Colour and size of the two labs' cells (median, quartiles, 1.5 IQR)")
    return fig


def plot_side_by_side(
    labs: Mapping[str, pd.DataFrame], classes: Sequence[str], per_lab: int = 3, seed: int = 0
) -> Figure:
    """One row per class: ``per_lab`` cells of each lab next to each other (``path``, ``label``)."""
    names = list(labs)
    cols = per_lab * len(names)
    fig, axes = plt.subplots(
        len(classes),
        cols,
        figsize=(1.5 * cols, 1.6 * len(classes)),
        squeeze=False,
        layout="constrained",
    )
    for i, c in enumerate(classes):
        for j, name in enumerate(names):
            rows = labs[name][labs[name]["label"] == c]
            pick = rows.sample(min(per_lab, len(rows)), random_state=seed) if len(rows) else rows
            for k in range(per_lab):
                ax = axes[i, j * per_lab + k]
                image_axis(ax)
                if k < len(pick):
                    thumb = thumbnail(pick["path"].iloc[k])
                    if thumb is not None:
                        ax.imshow(thumb)
                if i == 0 and k == 0:
                    ax.set_title(name, loc="left", fontsize=9, color=LAB_COLOURS[j % 2])
                if j == 0 and k == 0:
                    ax.set_ylabel(c, fontsize=9)
    return fig


def plot_coverage(curves: pd.DataFrame, thresholds: Mapping[str, Any] | None = None) -> Figure:
    """Accuracy of the answered cells against coverage, one line per set of cells.

    ``curves``: ``domain.coverage_curves``; ``thresholds``: ``cells -> (coverage, accuracy)``
    at the recorded threshold, marked on each line.
    """
    with sns.axes_style(STYLE):
        fig, ax = plt.subplots(figsize=(6.5, 4.2), layout="constrained")
        for i, (name, c) in enumerate(curves.groupby("cells", sort=False)):
            colour = LAB_COLOURS[i % 2]
            ax.plot(c["coverage"], c["accuracy"], color=colour, label=name, drawstyle="steps-post")
            point = (thresholds or {}).get(name)
            if point and point[0] is not None and point[1] is not None:
                ax.plot(*point, "o", color=colour, markersize=8, markeredgecolor="black")
        ax.set_xlim(0, 1.01)
        ax.set_xlabel("coverage (share of cells answered)")
        ax.set_ylabel("accuracy of the answered cells")
        ax.set_title("Answering fewer cells: the rule of notebook 04 (dots: its threshold)")
        ax.legend()
    return fig


def plot_shots(
    summary: pd.DataFrame,
    zero_shot: float | None = None,
    unlabelled: pd.DataFrame | None = None,
) -> Figure:
    """Held-out accuracy (classes present) against labelled cells per class, with its range.

    ``unlabelled``: the same summary for adapting with the lab's unlabelled cells too.
    """
    with sns.axes_style(STYLE):
        fig, ax = plt.subplots(figsize=(6.5, 4.2), layout="constrained")
        x = summary["shots"]
        ax.plot(x, 100 * summary["accuracy_present"], "o-", color=LAB_COLOURS[1], label="adapted")
        if (summary["repeats"] > 1).any():
            ax.fill_between(
                x,
                100 * summary["min"],
                100 * summary["max"],
                alpha=0.2,
                color=LAB_COLOURS[1],
                label="range over draws",
            )
        if unlabelled is not None and len(unlabelled):
            ax.errorbar(
                unlabelled["shots"],
                100 * unlabelled["accuracy_present"],
                yerr=100
                * np.abs(
                    unlabelled[["min", "max"]].to_numpy().T
                    - unlabelled["accuracy_present"].to_numpy()
                ),
                fmt="D",
                color=UNLABELLED_COLOUR,
                capsize=3,
                label="adapted + unlabelled cells (transductive)",
            )
        ax.plot(x, 100 * summary["before"], "s--", color="grey", label="base model, same cells")
        if zero_shot is not None:
            ax.axhline(100 * zero_shot, color=LAB_COLOURS[0], ls=":", label="zero-shot, all cells")
        ax.set_xscale("log")
        ax.set_xticks(list(x), [str(int(v)) for v in x])
        ax.minorticks_off()
        ax.set_ylim(0, 101)
        ax.set_xlabel("labelled cells per class used to adapt")
        ax.set_ylabel("accuracy on the other cells (%)")
        ax.set_title("Adapting with a few labelled cells of the new lab")
        ax.legend(fontsize=8)
    return fig


def plot_entropy(entropy: Mapping[str, np.ndarray], n_classes: int) -> Figure:
    """Histograms of the per-cell entropy of the predictions, one per set of cells."""
    ceiling = float(np.log(n_classes))
    with sns.axes_style(STYLE):
        fig, ax = plt.subplots(figsize=(6.5, 3.6), layout="constrained")
        bins = np.linspace(0, max(ceiling, 1e-3), 31)
        for colour, (name, e) in zip(LAB_COLOURS, entropy.items(), strict=False):
            ax.hist(e, bins=bins, density=True, alpha=0.55, color=colour, label=name)
        ax.axvline(ceiling, color="grey", ls=":", label=f"ln {n_classes}: all classes equal")
        ax.set_xlabel("entropy of the prediction among the classes present (nats)")
        ax.set_ylabel("density of cells")
        ax.set_title("How unsure the base model is, cell by cell")
        ax.legend(fontsize=8)
    return fig


def plot_remedies(table: pd.DataFrame) -> Figure:
    """Grouped bars: accuracy of every remedy, per set of cells (rejection: answered cells)."""
    t = table.copy()
    t["label"] = t["remedy"] + " (" + t["classes"] + ")"
    with sns.axes_style(STYLE):
        fig, ax = plt.subplots(figsize=(8.5, 0.32 * len(t) + 1.8), layout="constrained")
        sns.barplot(
            data=t,
            y="label",
            x=t["accuracy"] * 100,
            hue="cells",
            ax=ax,
            palette=list(LAB_COLOURS[: t["cells"].nunique()]),
            dodge=True,
        )
        for container in ax.containers:
            ax.bar_label(container, fmt="%.1f", fontsize=7, padding=2)
        ax.set_xlim(0, 105)
        ax.set_xlabel("accuracy (%)")
        ax.set_ylabel("")
        ax.legend(title="cells", loc="upper left", bbox_to_anchor=(1.01, 1))
        ax.set_title("Every remedy, measured")
    return fig
