"""Figures of notebook 01: the classes, example cells, their sizes and colours, the split."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from bloodlib.core.config import DEFAULT_SEED
from bloodlib.teach.plots.common import (
    SPLIT_ORDER,
    STYLE,
    annotate_bars,
    image_axis,
    ordered_classes,
    thumbnail,
    usable_rows,
)


def plot_class_distribution(table: pd.DataFrame) -> Figure:
    """Images per class, stacked as usable (status == "ok") and excluded."""
    status = np.where(table["status"] == "ok", "usable", "excluded")
    counts = pd.crosstab(table["label"].astype(str), status)
    counts = counts.reindex(index=ordered_classes(table["label"]), fill_value=0)
    counts = counts.reindex(columns=["usable", "excluded"], fill_value=0)

    with sns.axes_style(STYLE):
        fig, ax = plt.subplots(figsize=(10, 4.5), layout="constrained")
        x = np.arange(len(counts))
        ax.bar(x, counts["usable"], color="C0", label="usable")
        ax.bar(x, counts["excluded"], bottom=counts["usable"], color="C3", label="excluded")
        totals = counts.sum(axis=1).to_numpy()
        for xi, (tot, exc) in enumerate(zip(totals, counts["excluded"], strict=True)):
            text = f"{tot}" if exc == 0 else f"{tot}\n({exc} excl.)"
            ax.annotate(
                text,
                (xi, tot),
                ha="center",
                va="bottom",
                fontsize=8,
                xytext=(0, 2),
                textcoords="offset points",
            )
        ax.set_xticks(x, counts.index, rotation=30, ha="right")
        ax.set_ylim(0, max(1, totals.max()) * 1.18)
        ax.set_xlabel("class")
        ax.set_ylabel("images")
        ax.set_title(
            f"Images per class ({int(counts['usable'].sum())} usable, "
            f"{int(counts['excluded'].sum())} excluded)"
        )
        fig.legend(loc="outside right upper")  # outside: never hides a bar or its label
    return fig


def plot_examples(table: pd.DataFrame, per_class: int = 6, seed: int = DEFAULT_SEED) -> Figure:
    """A grid of random usable images: one row per class, class names as row labels."""
    usable = usable_rows(table)
    classes = ordered_classes(usable["label"])
    rng = np.random.default_rng(seed)
    n_rows, n_cols = max(1, len(classes)), max(1, per_class)

    fig, axes = plt.subplots(
        n_rows,
        n_cols,
        figsize=(1.5 * n_cols + 1.2, 1.5 * n_rows + 0.6),
        squeeze=False,
        layout="constrained",
    )
    for r, cls in enumerate(classes):
        paths = usable.loc[usable["label"].astype(str) == cls, "path"].to_numpy()
        take = rng.choice(len(paths), size=min(per_class, len(paths)), replace=False)
        for c in range(n_cols):
            ax = axes[r, c]
            image_axis(ax)
            if c < len(take):
                im = thumbnail(paths[take[c]])
                if im is None:
                    ax.text(
                        0.5,
                        0.5,
                        "unreadable",
                        ha="center",
                        va="center",
                        fontsize=7,
                        transform=ax.transAxes,
                    )
                else:
                    ax.imshow(im)
            if c == 0:
                ax.set_ylabel(cls, rotation=0, ha="right", va="center", fontsize=10)
    if not classes:
        axes[0, 0].text(0.5, 0.5, "no usable images", ha="center", va="center")
    fig.suptitle(f"Random examples per class (seed {seed})")
    return fig


def _boxes(
    ax: Axes, groups: Sequence[np.ndarray], positions: np.ndarray, colour: Any, width: float
) -> None:
    """Plain matplotlib box plots (seaborn 0.13 trips a deprecation warning in matplotlib >= 3.11)."""
    keep = [i for i, g in enumerate(groups) if len(g)]
    if not keep:
        return
    ax.boxplot(
        [groups[i] for i in keep],
        positions=positions[keep],
        widths=width,
        patch_artist=True,
        manage_ticks=False,
        boxprops={"facecolor": colour, "alpha": 0.75, "linewidth": 0.8},
        medianprops={"color": "black", "linewidth": 1},
        whiskerprops={"linewidth": 0.8},
        capprops={"linewidth": 0.8},
        flierprops={"marker": ".", "markersize": 2, "alpha": 0.5},
    )


def plot_size_colour(table: pd.DataFrame) -> Figure:
    """Per-class box plots of image width, height, brightness and mean R/G/B (usable images).

    When every image has the same size (the embedded sample: all resized alike), the two
    size panels would be flat lines: the size goes into the title and only colour is drawn.
    """
    usable = usable_rows(table)
    labels = usable["label"].astype(str)
    order = ordered_classes(labels)
    x = np.arange(len(order), dtype=float)

    def per_class(col: str) -> list[np.ndarray]:
        values = pd.to_numeric(usable[col], errors="coerce")
        return [values[labels == c].dropna().to_numpy() for c in order]

    sizes = usable[["width", "height"]].apply(pd.to_numeric, errors="coerce").dropna()
    one_size = len(sizes) > 0 and len(sizes.drop_duplicates()) == 1
    with sns.axes_style(STYLE):
        if one_size:
            fig, row = plt.subplots(1, 2, figsize=(12, 4.3), layout="constrained")
            panels = [(row[0], "brightness", "0-255")]
            ax_rgb, axes = row[1], row
        else:
            fig, grid = plt.subplots(2, 2, figsize=(12, 8), layout="constrained")
            panels = [
                (grid[0, 0], "width", "px"),
                (grid[0, 1], "height", "px"),
                (grid[1, 0], "brightness", "0-255"),
            ]
            ax_rgb, axes = grid[1, 1], grid.flat
        for ax, col, unit in panels:
            _boxes(ax, per_class(col), x, "C0", 0.6)
            ax.set_title(f"{col.capitalize()} per class")
            ax.set_ylabel(f"{col} ({unit})")
        for offset, (col, colour) in zip(
            (-0.27, 0.0, 0.27),
            (("mean_r", "tab:red"), ("mean_g", "tab:green"), ("mean_b", "tab:blue")),
            strict=True,
        ):
            _boxes(ax_rgb, per_class(col), x + offset, colour, 0.24)
            ax_rgb.plot([], [], "s", color=colour, label=col[-1].upper())  # legend proxy
        ax_rgb.set_title("Mean colour per class")
        ax_rgb.set_ylabel("channel mean (0-255)")
        ax_rgb.legend(title="channel", fontsize=8, loc="center left", bbox_to_anchor=(1.0, 0.5))
        for ax in axes:
            ax.set_xticks(x, order, rotation=30, ha="right")
            ax.set_xlim(-0.6, len(order) - 0.4)
        if one_size:
            w, h = (int(v) for v in sizes.iloc[0])
            fig.suptitle(f"Image colour ({len(usable)} usable images, every one {w} × {h} px)")
        else:
            fig.suptitle(f"Image size and colour ({len(usable)} usable images)")
    return fig


def plot_split(split_df: pd.DataFrame) -> Figure:
    """Images per class and split (left), and each split's class mix in percent (right).

    Matching percentages across splits show the split is stratified.
    """
    counts = pd.crosstab(split_df["label"].astype(str), split_df["split"].astype(str))
    splits = [s for s in SPLIT_ORDER if s in counts.columns]
    splits += sorted(set(counts.columns) - set(splits))
    counts = counts.reindex(index=ordered_classes(split_df["label"]), columns=splits, fill_value=0)
    share = 100 * counts / counts.sum(axis=0).replace(0, np.nan)

    with sns.axes_style(STYLE):
        fig, (ax_n, ax_p) = plt.subplots(1, 2, figsize=(12, 4.5), layout="constrained")
        counts.plot.bar(ax=ax_n, width=0.8)
        annotate_bars(ax_n, fontsize=6)
        ax_n.set_title("Images per class and split")
        ax_n.set_ylabel("images")
        share.plot.bar(ax=ax_p, width=0.8, legend=False)
        ax_p.set_title("Class share within each split")
        ax_p.set_ylabel("% of split")
        for ax in (ax_n, ax_p):
            ax.set_xlabel("")
            ax.tick_params(axis="x", labelrotation=30)
            for label in ax.get_xticklabels():
                label.set_ha("right")
        totals = ", ".join(f"{s} {int(counts[s].sum())}" for s in splits)
        ax_n.get_legend().remove()
        fig.legend(
            *ax_n.get_legend_handles_labels(),
            title=f"split ({totals})",
            loc="outside upper center",
            ncol=len(splits),
            fontsize=9,
        )
    return fig
