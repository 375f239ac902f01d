"""The sentences of notebook 01 (the data) that state a number or a ranking.

A sentence typed beside an output can contradict it once the data changes (the sample grows,
a defect is fixed); these functions compute the claim from the output itself. Each returns
Markdown text; notebooks display it with ``display(Markdown(...))``.
"""

from __future__ import annotations

from collections.abc import Mapping

import pandas as pd

from bloodlib.teach.narrative.words import and_list, few_names, pct

#: Largest-to-smallest class ratio up to which the classes are called nearly balanced: a
#: judgement call, made once here so every notebook uses the same words for the same data.
BALANCED_RATIO = 1.5


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
        f"from {bottom} ({few_names(smallest)}) to {top} ({few_names(largest)}) usable images per class, "
        f"{total} in all; the largest class is {ratio:.2f} times the smallest"
    )
    if ratio <= BALANCED_RATIO:
        return (
            f"The classes are nearly balanced: {where}. Accuracy and balanced accuracy "
            "weigh the classes almost alike here."
        )
    share = top / total
    return (
        f"The classes are imbalanced: {where}; {and_list(largest)} alone "
        f"{'is' if len(largest) == 1 else 'are'} {pct(share)} of the images. A classifier "
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
    detail = and_list([f"{v} {k.replace('_', ' ')}" for k, v in sorted(reasons.items())])
    return (
        f"Of {n_files} files, {usable} are usable and {excluded} "
        f"{'is' if excluded == 1 else 'are'} excluded ({detail})."
    )


def split_summary(split: pd.DataFrame) -> str:
    """Images per split with their shares, and whether any copy group spans two splits."""
    counts = split["split"].value_counts()
    total = int(counts.sum())
    parts = [
        f"{name} {int(counts.get(name, 0))} ({pct(counts.get(name, 0) / total)})"
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
    return f"{total} images: {and_list(parts)}; {leak}."


def leaked_test_images(split: pd.DataFrame) -> int:
    """Test rows whose copy group also has a row in the training split (0 when leak-free)."""
    train_groups = set(split.loc[split["split"] == "train", "group"])
    return int(split.loc[split["split"] == "test", "group"].isin(train_groups).sum())


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
