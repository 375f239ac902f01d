"""Calibration: whether a model's probabilities mean what they say, and temperature scaling.

Reliability tables and the expected calibration error (ECE) in bins sized to the test set,
softmax and its inverse, the geometric mean of several models' probabilities, and the one
temperature (fitted on validation cells) that best rescales a model's logits.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from bloodlib.evaluate.arrays import as_labels, as_proba

#: Bounds on the temperature searched by :func:`fit_temperature`.
T_MIN, T_MAX = 0.05, 20.0


def _bin_confidence(
    y_true: np.ndarray, proba: np.ndarray, n_bins: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-bin sample count, summed confidence and summed correctness."""
    conf = proba.max(axis=1)
    correct = (proba.argmax(axis=1) == y_true).astype(np.float64)
    # Bin i covers (i/n_bins, (i+1)/n_bins]; confidence 0 joins the first bin.
    bins = np.clip(np.ceil(conf * n_bins).astype(np.int64) - 1, 0, n_bins - 1)
    count = np.bincount(bins, minlength=n_bins)
    conf_sum = np.bincount(bins, weights=conf, minlength=n_bins)
    acc_sum = np.bincount(bins, weights=correct, minlength=n_bins)
    return count, conf_sum, acc_sum


#: Cells per confidence bin, on average, that :func:`calibration_bins` aims for: with fewer, one
#: or two cells decide a bin's accuracy and the ECE mostly measures noise.
CELLS_PER_BIN = 20


#: Fewest and most bins :func:`calibration_bins` returns (15 is the usual choice in the literature).
MIN_BINS, MAX_BINS = 5, 15


def calibration_bins(n: int) -> int:
    """Equal-width confidence bins for ECE and reliability diagrams of ``n`` test cells."""
    return int(min(MAX_BINS, max(MIN_BINS, n // CELLS_PER_BIN)))


def reliability_table(y_true: Any, proba: Any, n_bins: int = 15) -> pd.DataFrame:
    """Per-bin mean confidence (max probability) and accuracy over ``n_bins`` equal-width bins.

    All bins are returned; empty ones have ``count == 0`` and NaN confidence/accuracy.
    """
    if n_bins < 1:
        raise ValueError("n_bins must be >= 1")
    p = as_proba(proba)
    y = as_labels(y_true, p.shape[1])
    if len(y) != len(p):
        raise ValueError(f"proba has {len(p)} rows but y_true has {len(y)}")
    count, conf_sum, acc_sum = _bin_confidence(y, p, n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        confidence = np.where(count > 0, conf_sum / count, np.nan)
        accuracy = np.where(count > 0, acc_sum / count, np.nan)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    return pd.DataFrame(
        {
            "bin": np.arange(n_bins),
            "lower": edges[:-1],
            "upper": edges[1:],
            "confidence": confidence,
            "accuracy": accuracy,
            "count": count.astype(np.int64),
        }
    )


def expected_calibration_error(y_true: Any, proba: Any, n_bins: int = 15) -> float:
    """ECE: count-weighted mean |accuracy - confidence| over equal-width max-probability bins."""
    p = as_proba(proba)
    y = as_labels(y_true, p.shape[1])
    if len(y) != len(p):
        raise ValueError(f"proba has {len(p)} rows but y_true has {len(y)}")
    if len(y) == 0:
        raise ValueError("expected_calibration_error needs at least one sample")
    count, conf_sum, acc_sum = _bin_confidence(y, p, n_bins)
    # sum_b n_b/n * |acc_b - conf_b| == sum_b |acc_sum_b - conf_sum_b| / n
    return float(np.abs(acc_sum - conf_sum).sum() / len(y))


def softmax(logits: Any, temperature: float = 1.0) -> np.ndarray:
    """Row-wise softmax of ``logits / temperature`` (numerically stable)."""
    if temperature <= 0:
        raise ValueError("temperature must be > 0")
    z = np.asarray(logits, dtype=np.float64) / temperature
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def logits_from_proba(proba: Any, eps: float = 1e-7) -> np.ndarray:
    """Log of clipped probabilities: logits (up to a per-row constant) for models that only give probabilities."""
    return np.log(np.clip(np.asarray(proba, dtype=np.float64), eps, 1.0))


def log_average(probas: Sequence[Any]) -> np.ndarray:
    """Several predictions of the same cells combined by their normalised geometric mean.

    The mean of the log-probabilities, softmaxed again (a product of experts): a class
    scores high only when every prediction gives it weight, so one view's confident
    mistake is vetoed by another that finds the class unlikely, where an arithmetic mean
    would let it through at half strength.
    """
    if not len(probas):
        raise ValueError("log_average needs at least one prediction")
    return softmax(np.mean([logits_from_proba(p) for p in probas], axis=0))


def _log_softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


def _nll(logits: np.ndarray, y: np.ndarray, temperature: float) -> float:
    logp = _log_softmax(logits / temperature)
    return float(-logp[np.arange(len(y)), y].mean())


def fit_temperature(logits: Any, y_true: Any) -> float:
    """Temperature T in [0.05, 20] minimising the NLL of ``softmax(logits / T)`` on validation data.

    Fit on the validation split, never the test split. T > 1 softens an
    overconfident model; accuracy is unchanged because argmax is unchanged.
    """
    # Imported here: scipy.optimize is slow to import and only this function needs it.
    from scipy.optimize import minimize_scalar

    z = np.asarray(logits, dtype=np.float64)
    if z.ndim != 2:
        raise ValueError(f"logits must be (n, k), got shape {z.shape}")
    y = as_labels(y_true, z.shape[1])
    if len(y) != len(z) or len(y) == 0:
        raise ValueError("logits and y_true must have the same, non-zero length")
    # Searching log T makes the problem symmetric in "sharpen" vs "soften" and keeps T > 0.
    res = minimize_scalar(
        lambda log_t: _nll(z, y, float(np.exp(log_t))),
        bounds=(np.log(T_MIN), np.log(T_MAX)),
        method="bounded",
        options={"xatol": 1e-5},
    )
    return float(np.clip(np.exp(res.x), T_MIN, T_MAX))
