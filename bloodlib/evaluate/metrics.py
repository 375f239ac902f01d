"""Test-set metrics a hematologist can check: per-class rates, confidence intervals, calibration.

Everything here works on plain numpy arrays (labels as class indices, class
probabilities as an ``(n, k)`` array), so it never imports TensorFlow/Keras and
serves both the SVM and the fine-tuned CNN models.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from bloodlib.core.config import DEFAULT_SEED
from bloodlib.evaluate.arrays import as_labels, as_proba, boot_indices
from bloodlib.evaluate.calibration import expected_calibration_error

MetricFn = Callable[[np.ndarray, np.ndarray], float]


# ----------------------------------------------------------------------------- input checks


# ----------------------------------------------------------------------------- bootstrap


def _balanced_accuracy_rows(t: np.ndarray, p: np.ndarray, k: int) -> np.ndarray:
    """Balanced accuracy of each row of (b, n) label matrices: mean recall over present classes."""
    correct = t == p
    recalls = np.full((t.shape[0], k), np.nan)
    for c in range(k):
        is_c = t == c
        support = is_c.sum(axis=1)
        hits = (is_c & correct).sum(axis=1)
        np.divide(hits, support, out=recalls[:, c], where=support > 0)
    # Every row has at least one present class (n >= 1), so nanmean never sees an all-NaN row.
    return np.nanmean(recalls, axis=1)


def accuracy_interval(accuracy: float, n: float, alpha: float = 0.05) -> tuple[float, float]:
    """Wilson's ``(1 - alpha)`` interval of an accuracy measured on ``n`` cells: for a
    summary row that kept only the rate and the count (no cells to bootstrap)."""
    from scipy.stats import binomtest  # lazy: scipy.stats is slow to import

    n_cells = int(round(n))
    if n_cells < 1:
        raise ValueError("an interval needs at least one cell")
    right = int(round(accuracy * n_cells))
    ci = binomtest(right, n_cells).proportion_ci(1 - alpha, method="wilson")
    return float(ci.low), float(ci.high)


def bootstrap_ci(
    y_true: Any,
    y_pred: Any,
    metric: str | MetricFn,
    n_boot: int = 1000,
    seed: int = DEFAULT_SEED,
    alpha: float = 0.05,
) -> tuple[float, float]:
    """Percentile bootstrap ``(1 - alpha)`` interval of ``metric`` over resampled test samples.

    ``metric`` is ``"accuracy"`` or ``"balanced_accuracy"`` (vectorised over all
    resamples at once) or any callable ``metric(y_true, y_pred) -> float``;
    ``y_pred`` may then also be scores, e.g. an ``(n, k)`` probability array.
    """
    y_true = np.asarray(y_true)
    y_pred = np.asarray(y_pred)
    n = len(y_true)
    if n == 0:
        raise ValueError("bootstrap_ci needs at least one sample")
    if len(y_pred) != n:
        raise ValueError(f"y_true has {n} samples but y_pred has {len(y_pred)}")
    if n_boot < 1:
        raise ValueError("n_boot must be >= 1")
    if not 0 < alpha < 1:
        raise ValueError("alpha must be in (0, 1)")

    stats: list[np.ndarray] = []
    if metric in ("accuracy", "balanced_accuracy"):
        y_true = as_labels(y_true)
        y_pred = as_labels(y_pred)
        k = int(max(y_true.max(), y_pred.max())) + 1
        for idx in boot_indices(n, n_boot, seed):
            t, p = y_true[idx], y_pred[idx]
            if metric == "accuracy":
                stats.append((t == p).mean(axis=1))
            else:
                stats.append(_balanced_accuracy_rows(t, p, k))
    elif callable(metric):
        values = []
        # Resamples often miss a rare class; sklearn would repeat the same warning n_boot times.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for idx in boot_indices(n, n_boot, seed):
                values.extend(float(metric(y_true[row], y_pred[row])) for row in idx)
        stats.append(np.asarray(values))
    else:
        raise ValueError(
            f"unknown metric {metric!r}; use 'accuracy', 'balanced_accuracy' or a callable"
        )

    all_stats = np.concatenate(stats)
    lo, hi = np.nanpercentile(all_stats, [100 * alpha / 2, 100 * (1 - alpha / 2)])
    return float(lo), float(hi)


# ----------------------------------------------------------------------------- calibration


# ----------------------------------------------------------------------------- main entry point


def _binary_auc(is_pos: np.ndarray, score: np.ndarray) -> float | None:
    """ROC AUC via the Mann-Whitney rank statistic (ties count half), as sklearn computes it."""
    n_pos = int(is_pos.sum())
    n_neg = len(is_pos) - n_pos
    if n_pos == 0 or n_neg == 0:
        return None  # AUC is undefined without both positives and negatives
    # Average 1-based ranks of the scores; a tied group of m ending at rank c gets c - (m - 1) / 2.
    _, inverse, counts = np.unique(score, return_inverse=True, return_counts=True)
    ranks = (np.cumsum(counts) - (counts - 1) / 2.0)[inverse]
    return float((ranks[is_pos].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def _per_class(
    cm: np.ndarray, classes: Sequence[str], y: np.ndarray, p: np.ndarray
) -> tuple[dict[str, dict[str, Any]], list[float]]:
    """Precision, sensitivity, specificity, F1, AUC and support per class, from the confusion
    matrix (rows true, columns predicted); and the F1 values macro F1 averages."""
    n = int(cm.sum())
    tp = np.diag(cm)
    support = cm.sum(axis=1)
    predicted = cm.sum(axis=0)
    fp = predicted - tp
    tn = n - support - fp
    per_class: dict[str, dict[str, Any]] = {}
    f1_for_macro: list[float] = []
    for c, name in enumerate(classes):
        sup, pred_c = int(support[c]), int(predicted[c])
        sens = tp[c] / sup if sup else None
        if pred_c:
            prec = tp[c] / pred_c
        else:
            prec = 0.0 if sup else None  # zero_division=0 only where the class matters
        negatives = n - sup
        spec = tn[c] / negatives if negatives else None
        if sup == 0 and pred_c == 0:
            f1 = None  # class not involved at all: leave it out of macro F1, like sklearn
        else:
            denom = 2 * tp[c] + fp[c] + (sup - tp[c])
            f1 = 2 * tp[c] / denom if denom else 0.0
            f1_for_macro.append(float(f1))
        per_class[name] = {
            "precision": None if prec is None else float(prec),
            "sensitivity": None if sens is None else float(sens),
            "specificity": None if spec is None else float(spec),
            "f1": None if f1 is None else float(f1),
            "auc": _binary_auc(y == c, p[:, c]),
            "support": sup,
        }
    return per_class, f1_for_macro


def evaluate(
    y_true: Any,
    proba: Any,
    classes: Sequence[str],
    *,
    n_boot: int = 1000,
    seed: int = DEFAULT_SEED,
) -> dict[str, Any]:
    """All test-set metrics for one model, as a JSON-serialisable dict.

    Predictions are ``argmax(proba)``. Undefined values (e.g. sensitivity of a
    class absent from ``y_true``, AUC of a class without negatives) are ``None``;
    a class that is present but never predicted gets precision 0 (sklearn's
    ``zero_division=0``). ``n_boot=0`` skips the bootstrap intervals (``None``).

    Keys: n, classes, accuracy, accuracy_ci95, balanced_accuracy,
    balanced_accuracy_ci95, macro_f1, macro_auc, per_class, confusion, ece, nll, brier.
    """
    classes = [str(c) for c in classes]
    k = len(classes)
    if k == 0:
        raise ValueError("classes is empty")
    p = as_proba(proba)
    y = as_labels(y_true, k)
    if p.shape != (len(y), k):
        raise ValueError(f"proba must have shape ({len(y)}, {k}), got {p.shape}")
    n = len(y)
    if n == 0:
        raise ValueError("evaluate needs at least one sample")

    y_pred = p.argmax(axis=1)
    cm = np.zeros((k, k), dtype=np.int64)
    np.add.at(cm, (y, y_pred), 1)
    per_class, f1_for_macro = _per_class(cm, classes, y, p)

    aucs = [m["auc"] for m in per_class.values() if m["auc"] is not None]
    recalls = [m["sensitivity"] for m in per_class.values() if m["sensitivity"] is not None]

    if n_boot > 0:
        acc_ci: list[float] | None = list(bootstrap_ci(y, y_pred, "accuracy", n_boot, seed))
        bacc_ci: list[float] | None = list(
            bootstrap_ci(y, y_pred, "balanced_accuracy", n_boot, seed)
        )
    else:
        acc_ci = bacc_ci = None

    onehot = np.eye(k)[y]
    p_true = np.clip(p[np.arange(n), y], 1e-15, 1.0)
    return {
        "n": n,
        "classes": classes,
        "accuracy": float(np.mean(y == y_pred)),
        "accuracy_ci95": acc_ci,
        "balanced_accuracy": float(np.mean(recalls)),
        "balanced_accuracy_ci95": bacc_ci,
        "macro_f1": float(np.mean(f1_for_macro)) if f1_for_macro else None,
        "macro_auc": float(np.mean(aucs)) if aucs else None,
        "per_class": per_class,
        "confusion": cm.tolist(),
        "ece": expected_calibration_error(y, p),
        "nll": 0.0 - float(np.log(p_true).mean()),  # 0.0 - x avoids a printed -0.0
        # Multi-class Brier: mean over samples of sum_k (p_k - onehot_k)^2, in [0, 2].
        "brier": float(((p - onehot) ** 2).sum(axis=1).mean()),
    }


# ----------------------------------------------------------------------------- tables


_PER_CLASS_COLUMNS = ["precision", "sensitivity", "specificity", "f1", "auc", "support"]


def per_class_table(metrics: Mapping[str, Any]) -> pd.DataFrame:
    """Per-class metrics of :func:`evaluate` as a table: one row per class, NaN where undefined."""
    per_class = metrics["per_class"]
    df = pd.DataFrame.from_dict(per_class, orient="index")
    df = df.reindex(columns=_PER_CLASS_COLUMNS)
    for col in _PER_CLASS_COLUMNS[:-1]:
        df[col] = pd.to_numeric(df[col], errors="coerce").astype(float)
    df["support"] = df["support"].fillna(0).astype(int)
    df.index.name = "class"
    return df
