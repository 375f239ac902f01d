"""Figures for data exploration and evaluation.

Every function returns a :class:`matplotlib.figure.Figure` and never calls
``plt.show()``: notebooks display the returned figure inline, scripts pass it to
:func:`save_figure`. No backend is forced here (notebooks use inline, tests Agg).
Seaborn styling is applied per figure with ``sns.axes_style`` so importing this
module leaves global matplotlib settings untouched.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import matplotlib.ticker
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from PIL import Image

from bloodlib import CLASSES
from bloodlib.core import paper
from bloodlib.core.config import DEFAULT_SEED
from bloodlib.core.io import atomic_path
from bloodlib.evaluate.calibration import expected_calibration_error, reliability_table
from bloodlib.train.recipe import CHECKPOINT_MODE, CHECKPOINT_MONITOR

_STYLE = "whitegrid"
_SPLIT_ORDER = ("train", "val", "test")
_THUMB = 160  # px; thumbnails keep galleries of large images light in memory and in PNGs


# ----------------------------------------------------------------------------- helpers


def save_figure(fig: Figure, path: str | os.PathLike, dpi: int = 120, **kwargs: Any) -> Path:
    """Write ``fig`` atomically (temp file beside ``path``, then rename); create parent folders.

    The format follows the suffix of ``path`` (png when there is none).
    """
    path = Path(path)
    fmt = path.suffix.lstrip(".").lower() or "png"
    kwargs.setdefault("bbox_inches", "tight")
    with atomic_path(path, suffix=f".{fmt}") as tmp:
        fig.savefig(tmp, format=fmt, dpi=dpi, **kwargs)
    return path


def _ordered_classes(labels: Iterable[Any], classes: Sequence[str] | None = None) -> list[str]:
    """Known classes in canonical order first, then any unexpected labels sorted."""
    present = {str(x) for x in labels if pd.notna(x)}
    order = list(classes) if classes is not None else list(CLASSES)
    return [c for c in order if c in present] + sorted(present - set(order))


def _usable(table: pd.DataFrame) -> pd.DataFrame:
    if "status" not in table.columns:
        return table
    return table[table["status"] == "ok"]


def _thumbnail(path: Any, size: int = _THUMB) -> Image.Image | None:
    try:
        with Image.open(path) as im:
            im = im.convert("RGB")
            im.thumbnail((size, size))
            return im
    except (OSError, ValueError, TypeError):
        return None  # a missing/broken file is drawn as a placeholder, not a crash


def _image_axis(ax: Axes) -> None:
    """Hide ticks and frame but keep the axis on, so a y-label (row name) still shows."""
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_visible(False)
    ax.grid(False)


def _annotate_bars(ax: Axes, fmt: str = "{:.0f}", fontsize: int = 8) -> None:
    for container in ax.containers:
        ax.bar_label(container, fmt=fmt, fontsize=fontsize, padding=2)


# ----------------------------------------------------------------------------- data exploration


def plot_class_distribution(table: pd.DataFrame) -> Figure:
    """Images per class, stacked as usable (status == "ok") and excluded."""
    status = np.where(table["status"] == "ok", "usable", "excluded")
    counts = pd.crosstab(table["label"].astype(str), status)
    counts = counts.reindex(index=_ordered_classes(table["label"]), fill_value=0)
    counts = counts.reindex(columns=["usable", "excluded"], fill_value=0)

    with sns.axes_style(_STYLE):
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
    usable = _usable(table)
    classes = _ordered_classes(usable["label"])
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
            _image_axis(ax)
            if c < len(take):
                im = _thumbnail(paths[take[c]])
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
    """Per-class box plots of image width, height, brightness and mean R/G/B (usable images)."""
    usable = _usable(table)
    labels = usable["label"].astype(str)
    order = _ordered_classes(labels)
    x = np.arange(len(order), dtype=float)

    def per_class(col: str) -> list[np.ndarray]:
        values = pd.to_numeric(usable[col], errors="coerce")
        return [values[labels == c].dropna().to_numpy() for c in order]

    with sns.axes_style(_STYLE):
        fig, axes = plt.subplots(2, 2, figsize=(12, 8), layout="constrained")
        for ax, col, unit in (
            (axes[0, 0], "width", "px"),
            (axes[0, 1], "height", "px"),
            (axes[1, 0], "brightness", "0-255"),
        ):
            _boxes(ax, per_class(col), x, "C0", 0.6)
            ax.set_title(f"{col.capitalize()} per class")
            ax.set_ylabel(f"{col} ({unit})")

        ax_rgb = axes[1, 1]
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
        for ax in axes.flat:
            ax.set_xticks(x, order, rotation=30, ha="right")
            ax.set_xlim(-0.6, len(order) - 0.4)
        fig.suptitle(f"Image size and colour ({len(usable)} usable images)")
    return fig


def plot_split(split_df: pd.DataFrame) -> Figure:
    """Images per class and split (left), and each split's class mix in percent (right).

    Matching percentages across splits show the split is stratified.
    """
    counts = pd.crosstab(split_df["label"].astype(str), split_df["split"].astype(str))
    splits = [s for s in _SPLIT_ORDER if s in counts.columns]
    splits += sorted(set(counts.columns) - set(splits))
    counts = counts.reindex(index=_ordered_classes(split_df["label"]), columns=splits, fill_value=0)
    share = 100 * counts / counts.sum(axis=0).replace(0, np.nan)

    with sns.axes_style(_STYLE):
        fig, (ax_n, ax_p) = plt.subplots(1, 2, figsize=(12, 4.5), layout="constrained")
        counts.plot.bar(ax=ax_n, width=0.8)
        _annotate_bars(ax_n, fontsize=6)
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


# ----------------------------------------------------------------------------- evaluation


def plot_confusion(
    confusion: Any,
    classes: Sequence[str],
    normalize: bool = False,
    title: str | None = None,
    ax: Axes | None = None,
) -> Figure:
    """Confusion matrix heatmap (rows = true class), counts or row-normalised percent.

    Pass ``ax`` to draw into an existing axes; the figure holding it is returned.
    Rows of classes absent from the test set stay blank when normalised.
    """
    cm = np.asarray(confusion, dtype=np.float64)
    if normalize:
        rows = cm.sum(axis=1, keepdims=True)
        with np.errstate(invalid="ignore", divide="ignore"):
            data = np.where(rows > 0, 100 * cm / rows, np.nan)
        fmt, cbar_label = ".1f", "% of true class"
    else:
        data, fmt, cbar_label = cm.astype(np.int64), "d", "images"
    labels = [str(c) for c in classes]

    with sns.axes_style("white"):
        if ax is None:
            _, ax = plt.subplots(figsize=(7.5, 6.5), layout="constrained")
        sns.heatmap(
            data,
            annot=True,
            fmt=fmt,
            cmap="Blues",
            xticklabels=labels,
            yticklabels=labels,
            square=True,
            linewidths=0.5,
            linecolor="white",
            cbar_kws={"label": cbar_label},
            annot_kws={"fontsize": 8},
            vmin=0,
            vmax=100 if normalize else None,
            ax=ax,
        )
        ax.set_xlabel("predicted class")
        ax.set_ylabel("true class")
        ax.tick_params(axis="x", labelrotation=45)
        ax.tick_params(axis="y", labelrotation=0)
        for label in ax.get_xticklabels():
            label.set_ha("right")
        if title is None:
            n = int(cm.sum())
            acc = np.trace(cm) / n if n else float("nan")
            title = f"Confusion matrix ({'row %' if normalize else 'counts'}; n={n}, acc={acc:.3f})"
        ax.set_title(title)
    return ax.figure


def plot_confusions(conf: Any, classes: Sequence[str], title: str | None = None) -> Figure:
    """Counts and row-normalised percent confusion matrices side by side."""
    fig, (ax_c, ax_p) = plt.subplots(1, 2, figsize=(15, 6.5), layout="constrained")
    plot_confusion(conf, classes, normalize=False, title="Counts", ax=ax_c)
    plot_confusion(conf, classes, normalize=True, title="Row-normalised (% of true class)", ax=ax_p)
    ax_p.set_ylabel("")  # same rows as the left panel; the label would crowd the colour bar
    fig.get_layout_engine().set(wspace=0.06)
    if title:
        fig.suptitle(title)
    return fig


#: The ROC zoom panel (FPR <= 0.2, TPR >= 0.8) is drawn only when every class has at least this
#: many positives (the curve then moves in TPR steps of at most 5 points, finer than the window)
#: and the macro AUC reaches ROC_ZOOM_MIN_AUC (otherwise the curves leave the window).
ROC_ZOOM_MIN_POSITIVES = 20
ROC_ZOOM_MIN_AUC = 0.95


def _model_title(text: str, model_name: str) -> str:
    return f"{model_name}: {text}" if model_name else text


def plot_roc(y_true: Any, proba: Any, classes: Sequence[str], model_name: str = "") -> Figure:
    """One-vs-rest ROC curves with per-class AUC in the legend.

    A second panel zooms on the top-left corner only where that means something (see
    :data:`ROC_ZOOM_MIN_POSITIVES`): with a handful of positives per class the curves are
    coarse staircases and a zoom shows nothing new.
    """
    from sklearn.metrics import roc_auc_score, roc_curve

    y = np.asarray(y_true)
    p = np.asarray(proba, dtype=np.float64)
    colours = sns.color_palette("tab10", n_colors=max(len(classes), 1))
    curves = []
    for c, name in enumerate(classes):
        pos = y == c
        if pos.all() or not pos.any():
            continue  # ROC is undefined without both positives and negatives
        fpr, tpr, _ = roc_curve(pos, p[:, c])
        curves.append((c, name, fpr, tpr, roc_auc_score(pos, p[:, c]), int(pos.sum())))
    aucs = [cv[4] for cv in curves]
    zoom = (
        bool(curves)
        and min(cv[5] for cv in curves) >= ROC_ZOOM_MIN_POSITIVES
        and float(np.mean(aucs)) >= ROC_ZOOM_MIN_AUC
    )

    with sns.axes_style(_STYLE):
        if zoom:
            fig, (ax, ax_zoom) = plt.subplots(1, 2, figsize=(12, 5.5), layout="constrained")
            panels = (ax, ax_zoom)
        else:
            fig, ax = plt.subplots(figsize=(6.5, 5.5), layout="constrained")
            panels = (ax,)
        for c, name, fpr, tpr, auc, _ in curves:
            for a in panels:
                a.plot(fpr, tpr, color=colours[c], lw=1.5, label=f"{name} (AUC {auc:.3f})")
        for a in panels:
            a.plot([0, 1], [0, 1], ls="--", color="grey", lw=1)
            a.set_xlabel("false positive rate (1 - specificity)")
            a.set_ylabel("true positive rate (sensitivity)")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1.01)
        if zoom:
            ax_zoom.set_xlim(0, 0.2)
            ax_zoom.set_ylim(0.8, 1.005)
            ax_zoom.set_title("Zoom: FPR <= 0.2, TPR >= 0.8")
        macro = (
            f"macro AUC {np.mean(aucs):.3f}" if aucs else "no class with positives and negatives"
        )
        fewest = min((cv[5] for cv in curves), default=0)
        ax.set_title(
            _model_title(
                f"one-vs-rest ROC ({macro}; n={len(y)}, >= {fewest} per class)", model_name
            )
        )
        if aucs:
            ax.legend(loc="lower right", fontsize=8)
    return fig


def _reliability_curve(
    ax: Axes, ax_hist: Axes, y: Any, proba: Any, n_bins: int, label: str, colour: Any, offset: float
) -> None:
    table = reliability_table(y, proba, n_bins)
    ece = expected_calibration_error(y, proba, n_bins)
    filled = table[table["count"] > 0]
    ax.plot(
        filled["confidence"],
        filled["accuracy"],
        "o-",
        color=colour,
        ms=4,
        lw=1.5,
        label=f"{label} (ECE {ece:.3f})",
    )
    width = 1.0 / n_bins
    # Two histograms side by side within each bin when before/after are both drawn.
    ax_hist.bar(
        table["lower"] + offset * width,
        table["count"],
        width=width * 0.45,
        align="edge",
        color=colour,
        alpha=0.8,
        label=label,
    )


def plot_reliability(
    y_true: Any,
    proba_before: Any,
    proba_after: Any | None = None,
    n_bins: int | None = None,
    model_name: str = "",
) -> Figure:
    """Reliability diagram (accuracy vs confidence per bin), ECE in the legend.

    With ``proba_after`` (e.g. after temperature scaling) both curves are drawn. The lower
    panel shows how many test images fall in each confidence bin. ``n_bins`` defaults to
    :func:`bloodlib.evaluate.calibration.calibration_bins` of the number of images, so small test sets
    get fewer, fuller bins.
    """
    from bloodlib.evaluate.calibration import calibration_bins

    n = len(np.asarray(y_true))
    n_bins = int(n_bins or calibration_bins(n))
    with sns.axes_style(_STYLE):
        fig, (ax, ax_hist) = plt.subplots(
            2, 1, figsize=(7, 7.5), sharex=True, height_ratios=[3, 1], layout="constrained"
        )
        ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=1, label="perfect calibration")
        if proba_after is None:
            _reliability_curve(ax, ax_hist, y_true, proba_before, n_bins, "model", "C0", 0.275)
        else:
            _reliability_curve(
                ax, ax_hist, y_true, proba_before, n_bins, "before scaling", "C3", 0.05
            )
            _reliability_curve(ax, ax_hist, y_true, proba_after, n_bins, "after scaling", "C0", 0.5)
            ax_hist.legend(fontsize=8, loc="upper left")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1.02)
        ax.set_ylabel("accuracy")
        ax.set_title(
            _model_title(
                f"reliability diagram ({n_bins} bins on max probability, n={n})", model_name
            )
        )
        ax.legend(loc="upper left", fontsize=9)
        # One bin near 1.0 usually holds most images: a log axis keeps the others visible.
        ax_hist.set_yscale("symlog", linthresh=10)
        ax_hist.yaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}"))
        ax_hist.yaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax_hist.set_xlabel("confidence (max predicted probability)")
        ax_hist.set_ylabel("images")
    return fig


def plot_misclassified(
    df: pd.DataFrame,
    classes: Sequence[str] = CLASSES,
    n: int = 16,
    cols: int = 8,
    model_name: str = "",
) -> Figure:
    """Gallery of the most confident mistakes titled "true → pred (p)".

    ``df`` comes from :func:`bloodlib.evaluate.mistakes.misclassified`; an empty frame draws "no errors".
    A frame from :func:`bloodlib.evaluate.mistakes.shared_mistakes` adds how many seeds got each wrong.
    """
    rows_df = df.head(n)
    shared = {"n_wrong", "n_models"} <= set(df.columns)  # from evaluate.shared_mistakes
    if rows_df.empty:
        fig, ax = plt.subplots(figsize=(6, 2), layout="constrained")
        ax.axis("off")
        ax.text(
            0.5,
            0.5,
            "no errors: every test image was classified correctly",
            ha="center",
            va="center",
            fontsize=12,
        )
        ax.set_title(_model_title("misclassified images", model_name))
        return fig

    def name(value: Any) -> str:
        if isinstance(value, (int, np.integer)) and 0 <= value < len(classes):
            return str(classes[value])
        return str(value)

    cols = max(1, min(cols, len(rows_df)))
    n_rows = math.ceil(len(rows_df) / cols)
    fig, axes = plt.subplots(
        n_rows, cols, figsize=(1.6 * cols, 1.9 * n_rows + 0.5), squeeze=False, layout="constrained"
    )
    for ax in axes.flat:
        ax.axis("off")
    for ax, (_, row) in zip(axes.flat, rows_df.iterrows(), strict=False):
        im = _thumbnail(row["path"])
        if im is None:
            ax.text(0.5, 0.5, "missing", ha="center", va="center", transform=ax.transAxes)
        else:
            ax.imshow(im)
        seeds = f", {row['n_wrong']}/{row['n_models']}" if shared else ""
        ax.set_title(
            f"{name(row['true'])} →\n{name(row['pred'])} ({row['confidence']:.2f}{seeds})",
            fontsize=8,
        )
    what = (
        "mistakes shared by seeds, most shared first ({} of {} shown; true → pred (mean p, "
        "seeds wrong))"
        if shared
        else "most confident mistakes ({} of {} shown; true → pred (p))"
    )
    fig.suptitle(_model_title(what.format(len(rows_df), len(df)), model_name))
    return fig


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
    from bloodlib.teach import lesson

    monitor = monitor or CHECKPOINT_MONITOR
    mode = mode or CHECKPOINT_MODE
    h = history.reset_index(drop=True)
    if "epoch" in h.columns and h["epoch"].is_monotonic_increasing and h["epoch"].is_unique:
        x = h["epoch"].to_numpy(dtype=float) + 1
    else:
        start = float(h["epoch"].iloc[0]) if "epoch" in h.columns and len(h) else 0.0
        x = start + 1 + np.arange(len(h), dtype=float)
    h = h.assign(epoch=x - 1)  # laid end to end: best_epoch then numbers them like the x axis

    with sns.axes_style(_STYLE):
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

        best = lesson.best_epoch(h, monitor, mode)
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
            phase = h["phase"].astype(str).to_numpy()
            changes = np.flatnonzero(phase[1:] != phase[:-1]) + 1
            for i in changes:
                for ax in (ax_loss, ax_acc):
                    ax.axvline((x[i - 1] + x[i]) / 2, color="grey", ls=":", lw=1.5)
            # Tint each phase and name it in the legend: text on the axes would collide
            # with curves or legends wherever it is put.
            starts = np.concatenate([[0], changes])
            ends = np.concatenate([changes, [len(h)]]) - 1
            edges = np.concatenate([[x[0] - 0.5], (x[changes - 1] + x[changes]) / 2, [x[-1] + 0.5]])
            for j, (s, e) in enumerate(zip(starts, ends, strict=True)):
                for ax in (ax_loss, ax_acc):
                    ax.axvspan(
                        edges[j],
                        edges[j + 1],
                        color=f"C{(j + 2) % 10}",
                        alpha=0.08,
                        lw=0,
                        label=f"phase: {phase[s]} ({e - s + 1} epochs)",
                    )
        for ax in (ax_loss, ax_acc):
            if ax.get_legend_handles_labels()[0]:
                ax.legend(fontsize=8, loc="best")
        fig.suptitle(_model_title("learning curves", model_name))
    return fig


def plot_comparison(table: pd.DataFrame, *, smoke_test: bool = False) -> Figure:
    """Test accuracy per model (bars, 95% CI whiskers when given) with the paper's numbers as markers.

    ``table`` is :func:`bloodlib.evaluate.compare.comparison_table`'s output. ``smoke_test`` (a run on
    the embedded sample) says so in the title: those numbers check that the study runs, they
    are not a result to hold against the paper's.
    """
    t = table.reset_index(drop=True)
    acc = t["test_accuracy"].to_numpy(dtype=float)
    x = np.arange(len(t))
    labels = t["name"].astype(str) if "name" in t.columns else t.index.astype(str)

    with sns.axes_style(_STYLE):
        fig, ax = plt.subplots(figsize=(max(7.0, 1.3 * len(t) + 3), 4.5), layout="constrained")
        bars = ax.bar(x, acc, color="C0", width=0.6, label="this study (test accuracy)")
        if {"ci_lo", "ci_hi"} <= set(t.columns):
            lo, hi = t["ci_lo"].to_numpy(dtype=float), t["ci_hi"].to_numpy(dtype=float)
            ax.errorbar(
                x,
                acc,
                yerr=[acc - lo, hi - acc],
                fmt="none",
                ecolor="black",
                capsize=4,
                lw=1,
                label="95% bootstrap CI",
            )
        ax.bar_label(
            bars,
            labels=[f"{a:.3f}" if np.isfinite(a) else "" for a in acc],
            fontsize=8,
            label_type="center",
            color="white",
        )
        values = list(acc[np.isfinite(acc)])
        # The paper's four results as reference lines, so every model is read against them.

        names = {
            "vgg16": "VGG-16",
            "inception_v3": "InceptionV3",
            "svm": "SVM",
            "finetune": "fine-tuned",
        }
        styles = [(0, (1, 2)), (0, (4, 2)), (0, (6, 2, 1, 2)), (0, (8, 3))]
        ordered = sorted(paper.ACCURACY.items(), key=lambda kv: kv[1])
        for ((bb, method), ref), style in zip(ordered, styles, strict=False):
            ax.axhline(
                ref,
                color="dimgrey",
                ls=style,
                lw=1,
                zorder=0,
                label=f"paper: {names[bb]} {names[method]} {ref:.1%}",
            )
        values += list(paper.ACCURACY.values())
        if "paper" in t.columns and t["paper"].notna().any():
            reported = t["paper"].to_numpy(dtype=float)
            ax.scatter(
                x, reported, marker="D", s=50, color="C3", zorder=3, label="Acevedo et al. 2019"
            )
            values += list(reported[np.isfinite(reported)])
        # Accuracies cluster near the top: start the axis just below the lowest value
        # so differences of a few points stay visible.
        low = min(values) if values else 0.0
        ax.set_ylim(max(0.0, math.floor((low - 0.05) * 20) / 20), 1.0)
        ax.set_xticks(x, labels, rotation=20, ha="right")
        ax.set_ylabel("test accuracy")
        n_test = (
            f", {int(t['n_test'].max())} test cells"
            if "n_test" in t.columns and t["n_test"].notna().any()
            else ""
        )
        ax.set_title(
            f"Smoke test on the embedded sample{n_test}: not a result to compare with "
            "Acevedo et al. 2019\n(axis does not start at 0)"
            if smoke_test
            else f"Test accuracy per model{n_test}, with Acevedo et al. 2019's results "
            "for reference\n(axis does not start at 0)"
        )
        fig.legend(loc="outside lower center", ncols=3, fontsize=8)  # outside: bars reach the top
    return fig


# ----------------------------------------------------------------------------- class-activation maps


def _cam_pixels(row: pd.Series) -> np.ndarray | None:
    """The pixels a map is of: the row's ``image``, else its file at the map's size."""
    image = row.get("image")
    if image is not None and np.ndim(image) == 3:
        return np.asarray(image)
    cam = row.get("cam")
    size = np.shape(cam)[1::-1] if np.ndim(cam) == 2 else (_THUMB, _THUMB)
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
    from bloodlib.predict.cam import overlay

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


# ----------------------------------------------------------------------------- fine-tuning lesson


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
    with sns.axes_style(_STYLE):
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
            _model_title(f"learning rate per optimizer step ({len(curve)} steps)", model_name)
        )
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
    from bloodlib.predict.cam import overlay

    proba = np.asarray(proba, float)
    order = np.argsort(-proba, kind="stable")[: max(1, top)]
    pixels = np.clip(np.asarray(image, np.float32), 0, 255).astype(np.uint8)
    panels = 3 if cam is not None else 2
    with sns.axes_style(_STYLE):
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


def plot_bootstrap(
    accuracies: Any, accuracy: float, ci95: Sequence[float], model_name: str = ""
) -> Figure:
    """Histogram of bootstrap accuracies with the observed accuracy and the 95% interval."""
    boot = np.asarray(accuracies, dtype=np.float64)
    lo, hi = float(ci95[0]), float(ci95[1])
    with sns.axes_style(_STYLE):
        fig, ax = plt.subplots(figsize=(7, 3.6), layout="constrained")
        # One bar per attainable accuracy (k/n) when there are few test cells.
        values = np.unique(boot)
        bins = values.size if values.size <= 60 else 40
        ax.hist(boot, bins=bins, color="C0", alpha=0.75, label=f"{len(boot)} resampled test sets")
        ax.axvspan(lo, hi, color="C1", alpha=0.15, label=f"95% interval {lo:.3f} to {hi:.3f}")
        ax.axvline(accuracy, color="C3", lw=2, label=f"test accuracy {accuracy:.3f}")
        ax.set_xlabel("accuracy on a resampled test set")
        ax.set_ylabel("resamples")
        ax.legend(fontsize=8, loc="upper left")
        ax.set_title(_model_title("bootstrap distribution of the test accuracy", model_name))
    return fig


def plot_accuracy_vs_compute(table: pd.DataFrame, title: str = "") -> Figure:
    """Design 1 per backbone: test accuracy (95% bootstrap interval as error bars) against
    GMACs per image, each point labelled, with the paper's design-1 accuracies as dashed
    reference lines (different data and split: a landmark, not a target).

    ``table``: :func:`bloodlib.train.design1.backbone_table` (columns ``backbone``,
    ``image_size``, ``gmacs``, ``test_accuracy``, ``test_ci_low``, ``test_ci_high``).
    A backbone without a GMACs count is left out of the plot (it has no x).
    """

    rows = table.dropna(subset=["gmacs"])
    with sns.axes_style(_STYLE):
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
