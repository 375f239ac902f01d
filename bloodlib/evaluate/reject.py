"""Which answers to give: the classes a lab has, and when to say "uncertain".

Two rules on a model's class probabilities, shared by ``classify`` and the notebooks:

- :func:`restrict`: keep only the classes a lab actually has (a lab that counts white
  cells has no platelets) and renormalise the probabilities over them.
- Rejection: a cell is *uncertain* when its highest probability, after temperature
  scaling, falls below a threshold. The rule is the maximum softmax probability rather
  than an energy score because bloodlib's networks end in a softmax and save only
  probabilities: ``log p`` recovers the logits only up to a constant per image, which
  leaves the energy (``-T logsumexp(z / T)``) undefined, while the maximum probability is
  exact, lies in 0..1 and has the temperature already fitted in notebook 04
  (``evaluate.fit_temperature``).

:func:`choose_threshold` picks the threshold on validation probabilities for a target
accuracy or coverage; :func:`coverage_curve` gives coverage against accuracy for figures.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from bloodlib import CLASSES
from bloodlib.core.errors import BloodlibError
from bloodlib.evaluate.calibration import logits_from_proba, softmax

#: Default accuracy that :func:`choose_threshold` asks of the accepted validation cells:
#: a lab reviews the uncertain cells by eye, and a differential count tolerates about one
#: wrong cell in a hundred.
TARGET_ACCURACY = 0.99
#: A threshold that answers fewer validation cells than this share is no rule but a refusal
#: to answer: :func:`choose_threshold` reports none (and a study records none) instead.
MIN_COVERAGE = 0.05


#: How a table of results names "the model answered every one of its classes" (no
#: ``--classes``), beside "N present" when it was restricted to a lab's classes.
ALL_CLASSES = f"all {len(CLASSES)}"


class ClassSelectionError(BloodlibError):
    """``--classes`` names a class the model does not know, or none at all."""


def parse_classes(spec: str | Sequence[str], model_classes: Sequence[str]) -> list[str]:
    """The model's names for ``spec`` (``"lymphocyte,Monocyte"`` or a list), in model order.

    Case is ignored; an unknown or empty selection raises :class:`ClassSelectionError`
    listing the model's classes.
    """
    names = spec.split(",") if isinstance(spec, str) else list(spec)
    names = [str(n).strip() for n in names if str(n).strip()]
    known = {c.lower(): c for c in model_classes}
    unknown = [n for n in names if n.lower() not in known]
    if unknown or not names:
        what = f"unknown class(es) {', '.join(map(repr, unknown))}" if unknown else "no class"
        raise ClassSelectionError(
            f"--classes: {what}; the model's classes are: {', '.join(model_classes)} "
            "(give a comma-separated subset, e.g. --classes lymphocyte,monocyte,neutrophil)"
        )
    wanted = {known[n.lower()] for n in names}
    return [c for c in model_classes if c in wanted]


def scale(proba: Any, temperature: float = 1.0) -> np.ndarray:
    """Probabilities after temperature scaling: ``softmax(log p / T)`` (T = 1: unchanged)."""
    p = np.asarray(proba, dtype=np.float64)
    if temperature == 1.0:
        return p
    return softmax(logits_from_proba(p), temperature)


def restrict(
    proba: Any,
    classes: Sequence[str],
    allowed: Sequence[str] | None = None,
    temperature: float = 1.0,
) -> np.ndarray:
    """Temperature-scaled probabilities renormalised over ``allowed`` (columns in that order).

    ``allowed=None`` keeps every class. Equivalent to a softmax over the allowed classes'
    logits: the model's preferences among them are kept, the others are removed.
    """
    p = scale(proba, temperature)
    if allowed is None:
        return p
    idx = [list(classes).index(c) for c in allowed]
    sub = p[:, idx]
    total = sub.sum(axis=1, keepdims=True)
    # A row with no mass on any allowed class (an underflow) gets no preference among them.
    return np.where(total > 0, sub / np.where(total > 0, total, 1.0), 1.0 / len(idx))


def confidence(proba: Any) -> np.ndarray:
    """The rejection score: each row's highest probability (give it scaled probabilities)."""
    return np.asarray(proba, dtype=np.float64).max(axis=1)


def coverage_curve(proba: Any, y_true: Any) -> pd.DataFrame:
    """Coverage against accuracy of the accepted cells, one row per candidate threshold.

    ``proba``: the probabilities the rule sees (scaled, restricted); ``y_true``: column
    indices into them. Columns: ``threshold`` (accept confidence >= it), ``coverage``,
    ``n_accepted``, ``accuracy`` (on the accepted cells), sorted by falling coverage.
    """
    p = np.asarray(proba, dtype=np.float64)
    y = np.asarray(y_true, dtype=np.int64)
    if len(p) != len(y) or len(y) == 0:
        raise ValueError("proba and y_true must have the same, non-zero length")
    conf = confidence(p)
    correct = p.argmax(axis=1) == y
    order = np.argsort(-conf, kind="stable")
    conf, correct = conf[order], correct[order]
    hits = np.cumsum(correct)
    # Accepting at threshold t takes every cell with confidence >= t: the last of each run
    # of equal confidences is where the curve can stop.
    last = np.r_[conf[1:] != conf[:-1], True]
    n = np.flatnonzero(last) + 1
    curve = pd.DataFrame(
        {
            "threshold": conf[last],
            "coverage": n / len(y),
            "n_accepted": n,
            "accuracy": hits[last] / n,
        }
    )
    return curve.iloc[::-1].reset_index(drop=True)


def choose_threshold(
    proba: Any,
    y_true: Any,
    *,
    target_accuracy: float | None = TARGET_ACCURACY,
    target_coverage: float | None = None,
    min_coverage: float = MIN_COVERAGE,
) -> float | None:
    """A rejection threshold chosen on validation cells (never on the test cells).

    With ``target_accuracy``: the smallest threshold whose accepted cells reach that
    accuracy (the most cells answered for the accuracy asked); None when no threshold
    does while answering at least ``min_coverage`` of the cells. With ``target_coverage`` (and ``target_accuracy=None``): the highest threshold
    that still accepts that fraction of the cells. Give the probabilities the rule will
    see (:func:`restrict` with the fitted temperature).
    """
    if (target_accuracy is None) == (target_coverage is None):
        raise ValueError("give exactly one of target_accuracy and target_coverage")
    curve = coverage_curve(proba, y_true)
    if target_accuracy is not None:
        ok = curve[(curve["accuracy"] >= target_accuracy) & (curve["coverage"] >= min_coverage)]
        return float(ok["threshold"].min()) if len(ok) else None
    ok = curve[curve["coverage"] >= target_coverage]
    return float(ok["threshold"].max())


def accepted_metrics(proba: Any, y_true: Any, threshold: float | None) -> dict[str, Any]:
    """Coverage and accuracy on the accepted cells, beside the accuracy on all of them."""
    p = np.asarray(proba, dtype=np.float64)
    y = np.asarray(y_true, dtype=np.int64)
    correct = p.argmax(axis=1) == y
    keep = np.ones(len(y), bool) if threshold is None else confidence(p) >= threshold
    n = int(keep.sum())
    return {
        "reject_threshold": threshold,
        "coverage": float(n / len(y)) if len(y) else None,
        "n_accepted": n,
        "accepted_accuracy": float(correct[keep].mean()) if n else None,
        "all_accuracy": float(correct.mean()) if len(y) else None,
    }
