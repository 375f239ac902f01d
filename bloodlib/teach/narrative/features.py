"""The sentences of notebook 02 (design 1: frozen features and an SVM) that state a result."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from bloodlib.evaluate.seeds import seed_spread
from bloodlib.teach.narrative.words import and_list, pct


def most_confused(confusion: Any, classes: Sequence[str], k: int = 3) -> pd.DataFrame:
    """The ``k`` largest off-diagonal cells of a confusion matrix (rows true, columns predicted).

    Columns: ``true``, ``predicted``, ``count``, ``share`` (of the true class's cells). Ties
    are broken by class order, so the table is deterministic.
    """
    m = np.asarray(confusion, dtype=np.int64)
    support = m.sum(axis=1)
    rows = [
        (classes[i], classes[j], int(m[i, j]), m[i, j] / support[i] if support[i] else 0.0, i, j)
        for i in range(len(m))
        for j in range(len(m))
        if i != j and m[i, j] > 0
    ]
    rows.sort(key=lambda r: (-r[2], -r[3], r[4], r[5]))
    table = pd.DataFrame(rows[:k], columns=["true", "predicted", "count", "share", "_i", "_j"])
    return table.drop(columns=["_i", "_j"])


def confusion_sentence(confusion: Any, classes: Sequence[str], k: int = 3) -> str:
    """The most frequent confusions in words, counted from the matrix."""
    m = np.asarray(confusion, dtype=np.int64)
    errors = int(m.sum() - np.trace(m))
    if errors == 0:
        return f"All {int(m.sum())} test cells are classified correctly: no confusion to report."
    top = most_confused(m, classes, k)
    support = dict(zip(classes, m.sum(axis=1), strict=True))
    pairs = [
        f"**{r.true} → {r.predicted}** ({r.count} of {support[r.true]} {r.true} cells)"
        for r in top.itertuples()
    ]
    return (
        f"{errors} of {int(m.sum())} test cells are misclassified. The most frequent "
        f"confusion{'s are' if len(pairs) > 1 else ' is'} {and_list(pairs)}."
    )


def per_class_extremes(per_class: pd.DataFrame, metric: str = "sensitivity") -> str:
    """The best and worst recognised classes by ``metric`` (a per-class table indexed by class)."""
    values = per_class[metric].astype(float)
    best, worst = values.max(), values.min()
    best_names = [str(c) for c, v in values.items() if v == best]
    worst_names = [str(c) for c, v in values.items() if v == worst]
    if best == worst:
        return f"Every class has the same {metric}: {pct(best)}."
    return (
        f"Highest {metric}: {and_list(best_names)} ({pct(best)}); lowest: {and_list(worst_names)} "
        f"({pct(worst)})."
    )


def feature_shape(features: np.ndarray, backbone: str, image_size: int) -> str:
    """What the feature matrix is, from its shape."""
    n, d = features.shape
    return (
        f"`{backbone}` turns each {image_size} × {image_size} px image into a vector of "
        f"**{d} numbers**; the {n} images of the split form a {n} × {d} matrix."
    )


def explained_variance(ratios: Sequence[float]) -> str:
    """How much of the features' variance the first two principal components keep."""
    r = [float(x) for x in ratios]
    return (
        f"The first two principal components keep {pct(r[0] + r[1])} of the variance "
        f"({pct(r[0])} and {pct(r[1])}): the picture is a shadow of the full space, so "
        "classes that overlap here may still be separable there."
    )


#: CV accuracies closer than this (a tenth of a point, the precision the sentences print)
#: are called a tie: a difference the reader cannot even see is no reason to prefer a setting.
CV_TIE = 0.001


def _setting(row: Mapping[str, Any]) -> str:
    parts = [f"{row['kernel']} kernel", f"C = {row['C']:g}"]
    gamma = row.get("gamma")
    if isinstance(gamma, str) or (gamma is not None and not pd.isna(gamma)):
        parts.append(f"gamma = {gamma}")
    return ", ".join(parts)


def cv_sentence(table: pd.DataFrame, folds: int) -> str:
    """The chosen SVM setting and its margin over the next best, from a CV table ranked best
    first (columns ``kernel``, ``C``, optional ``gamma`` and ``chosen``, ``cv_accuracy``,
    ``cv_std``). Settings that tie with the chosen one are counted, not hidden."""
    chosen = table[table["chosen"]].iloc[0] if "chosen" in table else table.iloc[0]
    others = table.drop(index=chosen.name)
    text = (
        f"Cross-validation chose the **{_setting(chosen)}**: mean accuracy "
        f"{pct(chosen['cv_accuracy'])} over {folds} folds of the training split "
        f"(± {pct(chosen['cv_std'])} between folds)."
    )
    if others.empty:
        return text
    ties = others[(chosen["cv_accuracy"] - others["cv_accuracy"]).abs() < CV_TIE]
    if len(ties):
        return text + (
            f" {len(ties)} other setting{' is' if len(ties) == 1 else 's are'} within "
            f"{100 * CV_TIE:.1f} points of it ({'; '.join(_setting(r) for _, r in ties.iterrows())}):"
            " the training data cannot tell them apart."
        )
    second = others.iloc[0]
    gap = chosen["cv_accuracy"] - second["cv_accuracy"]
    text += f" The next best ({_setting(second)}) is {100 * gap:.1f} points behind"
    return text + (
        ", less than the spread between folds: the choice between them is close to a coin toss."
        if gap < chosen["cv_std"]
        else "."
    )


def backbone_sentence(table: pd.DataFrame) -> str:
    """What the comparison says: the best test accuracy, and the cheapest backbone (fewest
    GMACs) that a paired test on the same test cells does not tell apart from the best
    (``vs_best`` columns of :func:`bloodlib.train.design1.backbone_table`). With fewer than
    two backbones, how to run the comparison instead."""
    if len(table) < 2:
        only = f" (only {table['backbone'].iloc[0]} ran)" if len(table) else ""
        return (
            f"A comparison needs several backbones{only}. Run all four offline ones with "
            "`python -m bloodlib run --profile sample -p "
            "'02_feature_extraction_svm.backbones=[efficientnet_lite0, efficientnet_lite1, "
            "efficientnet_lite2, mobilenet_v2]'` (or `--profile backbones` on full data)."
        )
    best, others = table.iloc[0], table.iloc[1:]
    text = (
        f"Best test accuracy: {best['backbone']} at {best['image_size']} px, "
        f"{best['test_accuracy']:.1%} (95% interval {best['test_ci_low']:.1%} to "
        f"{best['test_ci_high']:.1%})."
    )
    paired = others.dropna(subset=["vs_best"])
    if paired.empty:
        return text + (
            " Whether the others are worse takes a paired test on the same test cells "
            "(`bloodlib.evaluate.paired_comparison`); their answers cell by cell are not known "
            "here, and two overlapping intervals do not say it."
        )
    # Not told apart: the paired interval of (other - best) reaches zero.
    tied = paired[paired["vs_best_ci_high"] >= 0]
    worse = len(paired) - len(tied)
    text += (
        f" A paired test on the same test cells tells {worse} of the other {len(paired)} "
        f"backbone{'s' if len(paired) != 1 else ''} apart from it (worse)"
    )
    with_gmacs = tied.dropna(subset=["gmacs"])
    if tied.empty:
        return text + ": every other backbone is worse than the best on these cells."
    cheap = with_gmacs.loc[with_gmacs["gmacs"].idxmin()] if len(with_gmacs) else None
    if cheap is None or pd.isna(best["gmacs"]) or cheap["gmacs"] >= best["gmacs"]:
        return text + (
            f"; {len(tied)} {'is' if len(tied) == 1 else 'are'} not told apart, but none costs "
            "less compute: the best is also the cheapest of them."
        )
    return text + (
        f"; {len(tied)} {'is' if len(tied) == 1 else 'are'} not. The cheapest of those is "
        f"{cheap['backbone']} ({cheap['test_accuracy']:.1%}, {100 * cheap['vs_best']:+.1f} "
        f"points, paired 95% interval {100 * cheap['vs_best_ci_low']:+.1f} to "
        f"{100 * cheap['vs_best_ci_high']:+.1f}; {cheap['gmacs']:.2f} GMACs an image against "
        f"{best['gmacs']:.2f}): on this test split the data cannot tell them apart, so the "
        "cheaper network is the reasonable choice."
    )


def svm_seed_sentence(table: pd.DataFrame) -> str:
    """What repeating design 1 over seeds changed, from :func:`seed_table`'s numbers (the
    standard deviation is :func:`bloodlib.evaluate.seeds.seed_spread`'s). One seed: how to run more."""

    if len(table) < 2:
        return (
            "One training seed: nothing to compare. `python -m bloodlib run --profile sample "
            "-p n_seeds=3` fits the SVM with three seeds on the same split (and fine-tunes "
            "three networks in notebook 03)."
        )
    first = table.iloc[0]
    entries = [
        {"name": first["name"], "backbone": "svm", "method": "svm", "tta": False, **row}
        for row in table[["seed", "test_accuracy", "balanced_accuracy"]].to_dict("records")
    ]
    spread = seed_spread(entries)[0]
    std = spread["accuracy_std"]
    settings = table[["kernel", "C"]].astype(str).drop_duplicates()
    text = (
        f"Over {len(table)} seeds on the same split, the SVM's test accuracy was "
        f"{100 * spread['accuracy_mean']:.1f} % on average with a standard deviation of "
        f"{100 * std:.2f} points (from {100 * table['test_accuracy'].min():.1f} % to "
        f"{100 * table['test_accuracy'].max():.1f} %). "
    )
    text += (
        "Cross-validation chose the same kernel and C for every seed. "
        if len(settings) == 1
        else f"Cross-validation chose {len(settings)} different settings of kernel and C. "
    )
    text += (
        "The features are frozen, so the seed only reshuffles the cross-validation folds and "
        "the folds Platt scaling calibrates on"
    )
    if table["test_accuracy"].nunique() == 1 and len(settings) == 1:
        return text + ": here it changed neither the chosen setting nor the test accuracy."
    return text + (
        ": enough to move some test cells across the boundary. Notebook 04 sets this spread "
        "beside the fine-tuned networks' and beside the bootstrap interval."
    )
