"""Figures of notebook 04: confusion matrices, ROC, reliability, bootstrap, the models compared,\nthe cells they miss (and those every seed misses), saliency maps and one cell's prediction."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import matplotlib.pyplot as plt
import matplotlib.ticker
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from sklearn.metrics import roc_auc_score, roc_curve

from bloodlib import CLASSES
from bloodlib.core import paper
from bloodlib.evaluate.calibration import (
    calibration_bins,
    expected_calibration_error,
    reliability_table,
)
from bloodlib.evaluate.seeds import seed_members
from bloodlib.teach.plots.common import (
    STYLE,
    model_title,
    thumbnail,
)


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


def plot_roc(y_true: Any, proba: Any, classes: Sequence[str], model_name: str = "") -> Figure:
    """One-vs-rest ROC curves with per-class AUC in the legend.

    A second panel zooms on the top-left corner only where that means something (see
    :data:`ROC_ZOOM_MIN_POSITIVES`): with a handful of positives per class the curves are
    coarse staircases and a zoom shows nothing new.
    """

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

    with sns.axes_style(STYLE):
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
            model_title(f"one-vs-rest ROC ({macro}; n={len(y)}, >= {fewest} per class)", model_name)
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

    n = len(np.asarray(y_true))
    n_bins = int(n_bins or calibration_bins(n))
    with sns.axes_style(STYLE):
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
            model_title(
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
        ax.set_title(model_title("misclassified images", model_name))
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
        im = thumbnail(row["path"])
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
    fig.suptitle(model_title(what.format(len(rows_df), len(df)), model_name))
    return fig


def _paper_lines(ax) -> list[float]:
    """The paper's four results as reference lines, so every model is read against them."""
    designs = {"svm": "SVM", "finetune": "fine-tuned"}
    styles = [(0, (1, 2)), (0, (4, 2)), (0, (6, 2, 1, 2)), (0, (8, 3))]
    ordered = sorted(paper.ACCURACY.items(), key=lambda kv: kv[1])
    for ((bb, method), ref), style in zip(ordered, styles, strict=False):
        name = f"{paper.BACKBONE_NAMES[bb]} {designs[method]}"
        ax.axhline(ref, color="dimgrey", ls=style, lw=1, zorder=0, label=f"paper: {name} {ref:.1%}")
    return list(paper.ACCURACY.values())


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

    with sns.axes_style(STYLE):
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
        values += _paper_lines(ax)
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


def plot_bootstrap(
    accuracies: Any, accuracy: float, ci95: Sequence[float], model_name: str = ""
) -> Figure:
    """Histogram of bootstrap accuracies with the observed accuracy and the 95% interval."""
    boot = np.asarray(accuracies, dtype=np.float64)
    lo, hi = float(ci95[0]), float(ci95[1])
    with sns.axes_style(STYLE):
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
        ax.set_title(model_title("bootstrap distribution of the test accuracy", model_name))
    return fig


def plot_seed_spread(
    entries: Sequence[Mapping[str, Any]], spread: Sequence[Mapping[str, Any]], title: str = ""
) -> Figure:
    """One column per :func:`~bloodlib.evaluate.seeds.seed_spread` row: a dot per training seed's
    test accuracy (the first seed filled), a bar at their mean, and the first seed's 95%
    bootstrap interval drawn beside them. Dots scattered less than that bar is long say the
    seed matters less than the luck of the test sample."""
    rows = list(spread)
    with sns.axes_style("whitegrid"):
        fig, ax = plt.subplots(figsize=(max(6.0, 1.6 * len(rows) + 2), 4.2), layout="constrained")
    labelled: set[str] = set()

    def label(text: str) -> str:
        if text in labelled:
            return "_nolegend_"  # one legend entry per kind of mark
        labelled.add(text)
        return text

    for i, row in enumerate(rows):
        members = seed_members(entries, row)
        acc = np.array([m["test_accuracy"] for m in members], dtype=float)
        first = next((m for m in members if m["name"] == row["name"]), members[0])
        offsets = np.linspace(-0.12, 0.12, len(acc)) if len(acc) > 1 else np.zeros(1)
        filled = np.array([m is first for m in members])
        ax.scatter(
            i + offsets[~filled],
            acc[~filled],
            color="C0",
            facecolor="white",
            zorder=3,
            label=label("another training seed"),
        )
        ax.scatter(
            i + offsets[filled],
            acc[filled],
            color="C0",
            zorder=3,
            label=label(f"first seed ({first.get('seed')})"),
        )
        ax.hlines(
            row["accuracy_mean"], i - 0.2, i + 0.2, color="C1", lw=2, label=label("mean over seeds")
        )
        ci = first.get("accuracy_ci95")
        if ci:
            a = float(first["test_accuracy"])
            ax.errorbar(
                i + 0.3,
                a,
                yerr=[[a - ci[0]], [ci[1] - a]],
                fmt="s",
                color="grey",
                capsize=4,
                label=label("first seed, 95% bootstrap interval"),
            )
    ax.set_xticks(range(len(rows)))
    ax.set_xticklabels(
        [f"{r['name']}\n{r['n_seeds']} seed{'s' if r['n_seeds'] != 1 else ''}" for r in rows],
        fontsize=8,
    )
    ax.set_xlim(-0.6, len(rows) - 0.4)
    ax.set_ylabel("test accuracy")
    ax.yaxis.set_major_formatter(matplotlib.ticker.PercentFormatter(1.0))
    fig.legend(fontsize=8, loc="outside lower center", ncols=2)  # never over a model's marks
    ax.set_title(title or "Test accuracy per training seed (same split and test cells)")
    return fig
