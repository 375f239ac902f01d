"""Figures of notebook 03: augmented copies of a cell, the learning-rate schedule, the learning curves."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import matplotlib.pyplot as plt
import matplotlib.ticker
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure

from bloodlib.teach.lesson import best_epoch
from bloodlib.teach.plots.common import (
    STYLE,
    model_title,
)
from bloodlib.train.recipe import CHECKPOINT_MODE, CHECKPOINT_MONITOR


def _mark_phases(axes, x: np.ndarray, phase: np.ndarray) -> None:
    """A dotted line where the phase changes, each phase tinted and named in the legend
    (text on the axes would collide with curves or legends wherever it is put)."""
    changes = np.flatnonzero(phase[1:] != phase[:-1]) + 1
    for i in changes:
        for ax in axes:
            ax.axvline((x[i - 1] + x[i]) / 2, color="grey", ls=":", lw=1.5)
    starts = np.concatenate([[0], changes])
    ends = np.concatenate([changes, [len(phase)]]) - 1
    edges = np.concatenate([[x[0] - 0.5], (x[changes - 1] + x[changes]) / 2, [x[-1] + 0.5]])
    for j, (s, e) in enumerate(zip(starts, ends, strict=True)):
        for ax in axes:
            ax.axvspan(
                edges[j],
                edges[j + 1],
                color=f"C{(j + 2) % 10}",
                alpha=0.08,
                lw=0,
                label=f"phase: {phase[s]} ({e - s + 1} epochs)",
            )


def plot_learning_curves(
    history: pd.DataFrame,
    model_name: str = "",
    *,
    monitor: str | None = None,
    mode: str | None = None,
) -> Figure:
    """Loss and accuracy per epoch from a Keras CSVLogger log; a dotted line marks phase changes.

    Epochs are numbered as Keras prints them ("Epoch 1/6"): the log's 0-based ``epoch`` plus
    one. A star marks the epoch the best-weights checkpoint keeps (``monitor``/``mode``,
    by default ``finetune``'s criterion: highest ``val_accuracy``, first on ties). Epochs
    that restart per phase (separate ``fit`` calls) are laid end to end.
    """
    monitor = monitor or CHECKPOINT_MONITOR
    mode = mode or CHECKPOINT_MODE
    h = history.reset_index(drop=True)
    if "epoch" in h.columns and h["epoch"].is_monotonic_increasing and h["epoch"].is_unique:
        x = h["epoch"].to_numpy(dtype=float) + 1
    else:
        start = float(h["epoch"].iloc[0]) if "epoch" in h.columns and len(h) else 0.0
        x = start + 1 + np.arange(len(h), dtype=float)
    h = h.assign(epoch=x - 1)  # laid end to end: best_epoch then numbers them like the x axis

    with sns.axes_style(STYLE):
        fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(12, 4.5), layout="constrained")
        for ax, metric in ((ax_loss, "loss"), (ax_acc, "accuracy")):
            drawn = False
            for col, style, label in (
                (metric, "-", "train"),
                (f"val_{metric}", "--", "validation"),
            ):
                if col in h.columns:
                    ax.plot(x, h[col], style, marker="o", ms=3, label=label)
                    drawn = True
            if not drawn:
                ax.text(
                    0.5,
                    0.5,
                    f"no {metric} logged",
                    ha="center",
                    va="center",
                    transform=ax.transAxes,
                )
            ax.set_xlabel("epoch (as Keras prints it)")
            ax.set_ylabel(metric)
            ax.set_title(metric.capitalize())
            ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))

        best = best_epoch(h, monitor, mode)
        if best is not None:
            epoch, value = best
            ax_best = ax_acc if "accuracy" in monitor else ax_loss
            ax_best.plot(
                epoch,
                value,
                "*",
                ms=13,
                color="C3",
                zorder=4,
                label=f"kept by the checkpoint: epoch {epoch} ({monitor} {value:.3f})",
            )

        if "phase" in h.columns and len(h) > 1:
            _mark_phases((ax_loss, ax_acc), x, h["phase"].astype(str).to_numpy())
        for ax in (ax_loss, ax_acc):
            if ax.get_legend_handles_labels()[0]:
                ax.legend(fontsize=8, loc="best")
        fig.suptitle(model_title("learning curves", model_name))
    return fig


def plot_augmentations(original: Any, copies: Sequence[Any], title: str = "") -> Figure:
    """One cell and its augmented copies, as training sees them (arrays in 0..255, HxWx3)."""
    images = [original, *copies]
    cols = min(len(images), 5)
    rows = math.ceil(len(images) / cols)
    fig, axes = plt.subplots(
        rows, cols, figsize=(2.0 * cols, 2.15 * rows + 0.4), squeeze=False, layout="constrained"
    )
    for ax in axes.flat:
        ax.axis("off")
    for i, (ax, im) in enumerate(zip(axes.flat, images, strict=False)):
        ax.imshow(np.clip(np.asarray(im, dtype=np.float64), 0, 255).astype(np.uint8))
        ax.set_title("original" if i == 0 else f"copy {i}", fontsize=9)
    fig.suptitle(title or f"One cell and {len(copies)} augmented copies")
    return fig


def plot_learning_rate(curve: pd.DataFrame, model_name: str = "") -> Figure:
    """Learning rate per optimizer step over both phases (``lesson.learning_rate_curve``)."""
    with sns.axes_style(STYLE):
        fig, ax = plt.subplots(figsize=(8, 3.6), layout="constrained")
        for j, (phase, part) in enumerate(curve.groupby("phase", sort=False)):
            ax.plot(
                part["epochs"], part["learning_rate"], color=f"C{j}", lw=2, label=f"phase: {phase}"
            )
        changes = curve.index[curve["phase"].ne(curve["phase"].shift()) & (curve.index > 0)]
        for i in changes:
            ax.axvline(curve.loc[i, "epochs"], color="grey", ls=":", lw=1.5)
        ax.set_yscale("log")
        ax.set_xlabel("epochs trained")
        ax.set_ylabel("learning rate (log scale)")
        ax.legend(fontsize=8)
        ax.set_title(
            model_title(f"learning rate per optimizer step ({len(curve)} steps)", model_name)
        )
    return fig
