"""Results put into words: the sentences of notebooks 01 and 02 that state a number or a ranking.

A sentence typed beside an output can contradict it once the data changes (the sample grows,
a defect is fixed); these functions compute the claim from the output itself. Each returns
Markdown text; notebooks display it with ``display(Markdown(...))``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

#: Largest-to-smallest class ratio up to which the classes are called nearly balanced: a
#: judgement call, made once here so every notebook uses the same words for the same data.
BALANCED_RATIO = 1.5


def _pct(x: float, digits: int = 1) -> str:
    return f"{100 * x:.{digits}f} %"


def _names(items: Sequence[str], most: int = 3) -> str:
    """A few names joined, or "N classes" when listing them would drown the sentence."""
    return _join(items) if len(items) <= most else f"{len(items)} classes"


def _join(items: Sequence[str]) -> str:
    items = list(items)
    if len(items) <= 1:
        return "".join(items)
    return ", ".join(items[:-1]) + " and " + items[-1]


def class_balance(counts: Mapping[str, int] | pd.Series) -> str:
    """How balanced the classes are, with the largest and smallest named and counted."""
    counts = pd.Series(counts, dtype="int64").sort_values(ascending=False, kind="stable")
    counts = counts[counts > 0]
    if counts.empty:
        return "There are no usable images."
    total = int(counts.sum())
    top, bottom = int(counts.iloc[0]), int(counts.iloc[-1])
    largest = [str(c) for c, v in counts.items() if v == top]
    smallest = [str(c) for c, v in counts.items() if v == bottom]
    ratio = top / bottom
    if top == bottom:
        return (
            f"The {len(counts)} classes are exactly balanced: {top} usable images each "
            f"({total} in all)."
        )
    where = (
        f"from {bottom} ({_names(smallest)}) to {top} ({_names(largest)}) usable images per class, "
        f"{total} in all; the largest class is {ratio:.2f} times the smallest"
    )
    if ratio <= BALANCED_RATIO:
        return (
            f"The classes are nearly balanced: {where}. Accuracy and balanced accuracy "
            "weigh the classes almost alike here."
        )
    share = top / total
    return (
        f"The classes are imbalanced: {where}; {_join(largest)} alone "
        f"{'is' if len(largest) == 1 else 'are'} {_pct(share)} of the images. A classifier "
        "can score well by favouring the large classes, which is why balanced accuracy is "
        "reported beside accuracy and the split is stratified."
    )


def quality_summary(n_files: int, status_counts: Mapping[str, int]) -> str:
    """How many files were scanned, usable and excluded (by reason)."""
    usable = int(status_counts.get("ok", 0))
    reasons = {k: int(v) for k, v in status_counts.items() if k != "ok" and v}
    excluded = sum(reasons.values())
    if not excluded:
        return f"All {n_files} files are usable images: the scan found no defect."
    detail = _join([f"{v} {k.replace('_', ' ')}" for k, v in sorted(reasons.items())])
    return (
        f"Of {n_files} files, {usable} are usable and {excluded} "
        f"{'is' if excluded == 1 else 'are'} excluded ({detail})."
    )


def split_summary(split: pd.DataFrame) -> str:
    """Images per split with their shares, and whether any copy group spans two splits."""
    counts = split["split"].value_counts()
    total = int(counts.sum())
    parts = [
        f"{name} {int(counts.get(name, 0))} ({_pct(counts.get(name, 0) / total)})"
        for name in ("train", "val", "test")
    ]
    spans = split.groupby("group")["split"].nunique() if "group" in split else pd.Series([])
    shared = int((spans > 1).sum())
    copies = int((split.groupby("group").size() > 1).sum()) if "group" in split else 0
    if shared:
        leak = f"{shared} groups of copies span two splits: the test score would be inflated"
    elif copies:
        leak = (
            f"each of the {copies} group{'' if copies == 1 else 's'} of near copies sits in "
            "one split, so no test image has a twin in training"
        )
    else:
        leak = "no usable image has a near copy here, so grouping had nothing to keep together"
    return f"{total} images: {_join(parts)}; {leak}."


def leaked_test_images(split: pd.DataFrame) -> int:
    """Test rows whose copy group also has a row in the training split (0 when leak-free)."""
    train_groups = set(split.loc[split["split"] == "train", "group"])
    return int(split.loc[split["split"] == "test", "group"].isin(train_groups).sum())


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
        f"confusion{'s are' if len(pairs) > 1 else ' is'} {_join(pairs)}."
    )


def per_class_extremes(per_class: pd.DataFrame, metric: str = "sensitivity") -> str:
    """The best and worst recognised classes by ``metric`` (a per-class table indexed by class)."""
    values = per_class[metric].astype(float)
    best, worst = values.max(), values.min()
    best_names = [str(c) for c, v in values.items() if v == best]
    worst_names = [str(c) for c, v in values.items() if v == worst]
    if best == worst:
        return f"Every class has the same {metric}: {_pct(best)}."
    return (
        f"Highest {metric}: {_join(best_names)} ({_pct(best)}); lowest: {_join(worst_names)} "
        f"({_pct(worst)})."
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
        f"The first two principal components keep {_pct(r[0] + r[1])} of the variance "
        f"({_pct(r[0])} and {_pct(r[1])}): the picture is a shadow of the full space, so "
        "classes that overlap here may still be separable there."
    )


#: Pixels by which an image may differ from the most common size and still be called "within
#: a few pixels" of it (PBC's odd images are 361-366 px against 360 x 363).
NEAR_SIZE_PX = 8


def image_sizes(table: pd.DataFrame) -> str:
    """The most common image size among usable rows, and how the others compare with it."""
    usable = table[table["status"] == "ok"] if "status" in table else table
    sizes = usable.groupby(["width", "height"]).size().sort_values(ascending=False, kind="stable")
    (w, h), n = sizes.index[0], int(sizes.iloc[0])
    total = int(sizes.sum())
    others = total - n
    if others == 0:
        return f"All {total} usable images are {int(w)} × {int(h)} px."
    near = all(abs(a - w) <= NEAR_SIZE_PX and abs(b - h) <= NEAR_SIZE_PX for a, b in sizes.index)
    how = "all within a few pixels of it" if near else "some far from it"
    return (
        f"{n} of {total} usable images are {int(w)} × {int(h)} px; the other {others} "
        f"{'has' if others == 1 else 'have'} "
        f"{len(sizes) - 1} other size{'' if len(sizes) == 2 else 's'}, {how}."
    )


def brightness_extremes(table: pd.DataFrame) -> str:
    """The darkest and brightest classes on average (mean luma of the usable images)."""
    usable = table[table["status"] == "ok"] if "status" in table else table
    mean = usable.groupby("label")["brightness"].mean().round(1)
    dark, bright = mean.idxmin(), mean.idxmax()
    return (
        f"On average the darkest images are {dark} ({mean[dark]:.1f} of 255) and the "
        f"brightest {bright} ({mean[bright]:.1f}): colour and brightness alone carry some "
        "class information, so colour augmentation must stay mild."
    )


def _setting(row: Mapping[str, Any]) -> str:
    parts = [f"{row['kernel']} kernel", f"C = {row['C']:g}"]
    gamma = row.get("gamma")
    if isinstance(gamma, str) or (gamma is not None and not pd.isna(gamma)):
        parts.append(f"gamma = {gamma}")
    return ", ".join(parts)


#: CV accuracies closer than this (a tenth of a point, the precision the sentences print)
#: are called a tie: a difference the reader cannot even see is no reason to prefer a setting.
CV_TIE = 0.001


def cv_sentence(table: pd.DataFrame, folds: int) -> str:
    """The chosen SVM setting and its margin over the next best, from a CV table ranked best
    first (columns ``kernel``, ``C``, optional ``gamma`` and ``chosen``, ``cv_accuracy``,
    ``cv_std``). Settings that tie with the chosen one are counted, not hidden."""
    chosen = table[table["chosen"]].iloc[0] if "chosen" in table else table.iloc[0]
    others = table.drop(index=chosen.name)
    text = (
        f"Cross-validation chose the **{_setting(chosen)}**: mean accuracy "
        f"{_pct(chosen['cv_accuracy'])} over {folds} folds of the training split "
        f"(± {_pct(chosen['cv_std'])} between folds)."
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
