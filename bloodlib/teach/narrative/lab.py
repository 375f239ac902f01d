"""The sentences of notebook 05 (another lab's cells) that state a result.

Where the lab's cells come from (saying plainly when they are synthetic), how far the model
falls, why (colour and size), and what each remedy buys, from ``bloodlib.study.domain``'s
records.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd

from bloodlib import CLASSES
from bloodlib.data import look
from bloodlib.data.labs import OtherLab
from bloodlib.evaluate import reject
from bloodlib.evaluate.compare import PairedComparison
from bloodlib.evaluate.metrics import accuracy_interval
from bloodlib.teach.narrative.evaluation import paired_lead_sentence
from bloodlib.teach.narrative.words import and_list, pct


def lab_sentence(lab: OtherLab, n_source: int | None = None) -> str:
    """Where the other lab's cells come from, saying plainly when they are synthetic."""
    per = lab.cells["label"].value_counts().reindex(lab.classes_present)
    counts = and_list([f"{c} {int(n)}" for c, n in per.items()])
    if lab.synthetic:
        return (
            f"**The other lab here is synthetic.** No other lab's cells were given "
            f"(`other_lab = None`), so its {len(lab.cells)} cells are the run's PBC test cells "
            f"shifted by `look.other_lab` (a yellow tint, a flatter camera curve, a "
            f"{look.OTHER_LAB_ZOOM:g}x zoom and a slight blur), written to `{lab.folder.name}/` "
            f"in the run folder ({counts}). Every number below measures this made-up shift, "
            "not a real lab: pass `other_lab` (e.g. `../shared/data/external-dev/tecom`) to "
            "measure real cells."
        )
    return (
        f"The other lab's cells: {len(lab.cells)} real cells from `{lab.folder}` ({counts}; "
        f"fingerprint `{lab.fingerprint}`)."
    )


def zero_shot_sentence(
    all_classes: Mapping[str, Any], present: Mapping[str, Any], pbc: float
) -> str:
    """The PBC model's fall on the other lab, all classes and among those present."""
    instead = pd.Series(all_classes["predicted"])
    absent = set(CLASSES) - set(present["classes_allowed"] or CLASSES)
    wrong_absent = int(instead.isin(absent).sum())
    text = (
        f"On its own PBC test cells the model is right {pct(pbc)} of the time; on the other "
        f"lab's {all_classes['n']} cells, {pct(all_classes['accuracy'])} (balanced "
        f"{pct(all_classes['balanced_accuracy'])})."
    )
    if not absent:
        text += " The lab has all eight classes, so allowing only its classes changes nothing."
    else:
        text += (
            f" Allowed to answer only the {len(present['classes_allowed'])} classes the lab has: "
            f"{pct(present['accuracy'])} (balanced {pct(present['balanced_accuracy'])})."
        )
        text += (
            f" {wrong_absent} of the {all_classes['n']} cells were called a class this lab does "
            f"not have ({and_list(sorted(absent))})."
        )
    return text


def shift_sentence(table: pd.DataFrame, pbc: str, other: str) -> str:
    """How the two labs' colour and nucleus size differ, from :func:`shift_table`."""
    t = table
    ratio = t.loc["nucleus_fraction", other] / t.loc["nucleus_fraction", pbc]
    hue = np.hypot(t.loc["a", other] - t.loc["a", pbc], t.loc["b", other] - t.loc["b", pbc])
    size = (
        f"its nuclei span {ratio:.2f} times PBC's share of the frame"
        if abs(ratio - 1) >= 0.05
        else "its nuclei fill about the same share of the frame as PBC's"
    )
    return (
        f"Median over the cells measured: the other lab's lightness L* is "
        f"{t.loc['L', other]:.1f} against PBC's {t.loc['L', pbc]:.1f}, its b* (blue to yellow) "
        f"{t.loc['b', other]:.1f} against {t.loc['b', pbc]:.1f}, a colour distance of "
        f"{hue:.1f} in the a*b* plane; {size} ({t.loc['nucleus_fraction', other]:.3f} against "
        f"{t.loc['nucleus_fraction', pbc]:.3f} of the side)."
    )


def _with_interval(accuracy: float, n: float) -> str:
    lo, hi = accuracy_interval(accuracy, n)
    return f"{pct(accuracy)} (95 % interval {pct(lo)} to {pct(hi)}, n = {int(round(n))})"


def best_remedy(
    table: pd.DataFrame, cells: str = "other lab"
) -> tuple[pd.Series | None, pd.Series | None]:
    """The row :func:`remedies_sentence` ranks first on ``cells`` (the highest accuracy among
    rows answering every cell, scored on the same cells as the untouched model) and the
    untouched model's row it is compared with (same classes, else all of them)."""
    rows = table[(table["cells"] == cells) & (table["coverage"] >= 1.0)]
    if rows.empty:
        return None, None
    untouched = rows[rows["remedy"] == "none"]
    n_all = untouched["n"].max() if len(untouched) else rows["n"].max()
    same = rows[rows["n"] == n_all]
    best = same.loc[same["accuracy"].idxmax()]
    base = untouched[untouched["classes"] == best["classes"]]
    if base.empty:
        base = untouched[untouched["classes"] == reject.ALL_CLASSES]
    return best, (base.iloc[0] if len(base) else None)


def remedies_sentence(
    table: pd.DataFrame, cells: str = "other lab", *, paired: PairedComparison | None = None
) -> str:
    """The remedy with the highest accuracy on ``cells`` (answering every cell) against the
    untouched model on the same cells, with its interval and, given ``paired``
    (:func:`bloodlib.study.domain.paired_remedy` of :func:`best_remedy`'s rows), the paired
    test of the two; rows scored on other cells (``adapt``'s held-out cells) are named as
    such, never ranked against them."""
    best, b = best_remedy(table, cells)
    if best is None:
        return f"No remedy was measured on the {cells}'s cells."
    rows = table[(table["cells"] == cells) & (table["coverage"] >= 1.0)]
    elsewhere = rows[rows["n"] != best["n"]]
    text = (
        f"On the {cells}'s cells the highest accuracy answering every cell is "
        f"**{best['remedy']}**'s ({best['classes']} classes): "
        f"{_with_interval(best['accuracy'], best['n'])}"
    )
    if b is not None and (b["remedy"], b["classes"]) != (best["remedy"], best["classes"]):
        gain = 100 * (best["accuracy"] - b["accuracy"])
        text += (
            f", {gain:+.1f} points over the untouched model on the same cells "
            f"({pct(b['accuracy'])}, {b['classes']} classes)."
        )
        text += " " + (
            paired_lead_sentence(best["remedy"], "the untouched model", paired)
            if paired is not None
            else "Whether that is more than the luck of these cells takes a paired test."
        )
    else:
        text += "."
    if len(elsewhere):
        text += (
            f" {len(elsewhere)} row{'s are' if len(elsewhere) != 1 else ' is'} scored on other, "
            f"fewer cells (adapt's held-out cells: {int(elsewhere['n'].min())} to "
            f"{int(elsewhere['n'].max())}), so not ranked against these."
        )
    if cells == "other lab":
        text += (
            " The table reports what each remedy did on these labelled cells; picking a remedy "
            "for a new lab by it would tune on the cells it is judged on."
        )
        if (rows["n"] < 100).any():
            text += " With fewer than 100 cells one cell moves accuracy by more than a point."
    return text


def robust_sentence(
    pbc_base: float, pbc_robust: float, other_base: float, other_robust: float, synthetic: bool
) -> str:
    """What the robust recipe cost on PBC and bought on the other lab (classes present)."""
    d_pbc = 100 * (pbc_robust - pbc_base)
    d_other = 100 * (other_robust - other_base)
    text = (
        f"The robust model scores {pct(pbc_robust)} on the PBC test cells ({d_pbc:+.1f} points "
        f"against the base model's {pct(pbc_base)}) and {pct(other_robust)} on the other lab "
        f"among the classes present ({d_other:+.1f} points against {pct(other_base)})."
    )
    if synthetic:
        text += (
            " On a synthetic lab this flatters it: the other-lab augmentation (zoom, blur, tint, "
            "gamma) covers the synthetic shift by construction, so only real cells of another lab "
            "can judge the recipe."
        )
    return text


def adapt_sentence(summary: pd.DataFrame, zero_shot_present: float, repeats: int) -> str:
    """How held-out accuracy grows with the labelled cells per class."""
    if summary.empty:
        return "No adaptation was run."
    first, last = summary.iloc[0], summary.iloc[-1]

    def point(row: pd.Series) -> str:
        return (
            f"{_with_interval(row['accuracy_present'], row['n_held_out'])} of the held-out "
            f"cells against {pct(row['before'])} for the base model on the same cells"
        )

    text = (
        f"With {int(first['shots'])} labelled cell(s) per class, the adapted model is right on "
        f"{point(first)}"
        + (f"; with {int(last['shots'])}, on {point(last)}" if len(summary) > 1 else "")
        + f". (On all of the lab's cells the base model scores {pct(zero_shot_present)}: other "
        "cells than the held-out ones, so not comparable point for point.)"
    )
    if repeats == 1:
        text += (
            " One draw of support cells per point: another draw moves each point, the more so "
            "the fewer held-out cells are left (raise `adapt_repeats` to see by how much)."
        )
    else:
        text += f" Each point is the mean of {repeats} draws; the band spans their range."
    return text


def unlabelled_sentence(with_unlabelled: pd.DataFrame, without: pd.DataFrame) -> str:
    """Adapting with the lab's unlabelled cells beside the same numbers of shots without."""
    if with_unlabelled.empty:
        return "Adapting with unlabelled cells was not run (`unlabelled_shots` is empty)."
    plain = without.set_index("shots")["accuracy_present"]
    parts = []
    for s in with_unlabelled.itertuples():
        also = f" (without them: {pct(plain[s.shots])})" if s.shots in plain.index else ""
        parts.append(f"{pct(s.accuracy_present)} with {int(s.shots)} per class{also}")
    n = int(with_unlabelled["n_unlabelled"].max())
    return (
        f"Adding the lab's other cells without their labels ({n} unlabelled cells, "
        f"`adapt --unlabelled`): {'; '.join(parts)}. The scored cells were "
        "among the unlabelled ones, so the score is transductive: what a lab gets when it "
        "adapts on the very batch it then classifies."
    )


def entropy_sentence(entropy: Mapping[str, np.ndarray], n_classes: int) -> str:
    """Mean entropy of the predictions per set of cells, beside its ceiling ln(n_classes)."""
    means = ", ".join(f"{name} {float(np.mean(e)):.2f}" for name, e in entropy.items())
    return (
        f"Mean entropy of the base model's predictions among the {n_classes} classes present "
        f"(nats): {means}; at most ln {n_classes} = {np.log(n_classes):.2f}, when every class "
        "is equally likely."
    )
