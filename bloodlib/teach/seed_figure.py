"""The figure of notebook 04's seed section: test accuracy per training seed, beside the first
seed's bootstrap interval (what one run would report).

Kept beside :mod:`bloodlib.teach.plots` and in its style (returns a Figure, never shows it); the
numbers come from :func:`bloodlib.evaluate.seeds.seed_spread` and the metrics entries.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import matplotlib.pyplot as plt
import matplotlib.ticker
import numpy as np
import seaborn as sns
from matplotlib.figure import Figure

from bloodlib.evaluate.seeds import seed_members


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
