"""Test-set metrics a hematologist can check: per-class rates, confidence intervals, calibration.

Everything here works on plain numpy arrays (labels as class indices, class
probabilities as an ``(n, k)`` array), so it never imports TensorFlow/Keras and
serves both the SVM and the fine-tuned CNN models.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from bloodlib.core.config import DEFAULT_SEED
from bloodlib.core.paper import ACCURACY

#: Bounds on the temperature searched by :func:`fit_temperature`.
T_MIN, T_MAX = 0.05, 20.0

# Bootstrap index matrices are drawn in chunks of at most this many entries so that
# n_boot x n stays within a few hundred MB even for large test sets.
_BOOT_CHUNK_ENTRIES = 20_000_000

MetricFn = Callable[[np.ndarray, np.ndarray], float]


# ----------------------------------------------------------------------------- input checks


def _labels(y_true: Any, k: int | None = None) -> np.ndarray:
    y = np.asarray(y_true)
    if y.ndim != 1:
        raise ValueError(f"y_true must be 1-D class indices, got shape {y.shape}")
    if y.size and not np.issubdtype(y.dtype, np.integer):
        if np.issubdtype(y.dtype, np.floating) and np.all(np.mod(y, 1) == 0):
            y = y.astype(np.int64)
        else:
            raise ValueError("y_true must hold integer class indices")
    y = y.astype(np.int64, copy=False)
    if k is not None and y.size and (y.min() < 0 or y.max() >= k):
        raise ValueError(f"y_true holds indices outside [0, {k})")
    return y


def _proba(proba: Any, n: int | None = None) -> np.ndarray:
    p = np.asarray(proba, dtype=np.float64)
    if p.ndim == 1:  # a single-class model may hand back a flat vector
        p = p[:, None]
    if p.ndim != 2:
        raise ValueError(f"proba must be (n, k), got shape {p.shape}")
    if n is not None and p.shape[0] != n:
        raise ValueError(f"proba has {p.shape[0]} rows but y_true has {n}")
    if not np.isfinite(p).all():
        raise ValueError("proba holds NaN or infinite values")
    if p.size and (p.min() < -1e-6 or p.max() > 1 + 1e-6):
        # Logits passed where probabilities belong: a silent wrong ECE/NLL otherwise.
        raise ValueError("proba has values outside [0, 1]; pass softmax(logits) instead of logits")
    return p


# ----------------------------------------------------------------------------- bootstrap


def _boot_indices(n: int, n_boot: int, seed: int) -> Iterator[np.ndarray]:
    """Yield (b, n) index chunks that together make ``n_boot`` bootstrap resamples."""
    rng = np.random.default_rng(seed)
    per_chunk = max(1, _BOOT_CHUNK_ENTRIES // max(n, 1))
    done = 0
    while done < n_boot:
        b = min(per_chunk, n_boot - done)
        yield rng.integers(0, n, size=(b, n))
        done += b


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
        y_true = _labels(y_true)
        y_pred = _labels(y_pred)
        k = int(max(y_true.max(), y_pred.max())) + 1
        for idx in _boot_indices(n, n_boot, seed):
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
            for idx in _boot_indices(n, n_boot, seed):
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
    p = _proba(proba)
    y = _labels(y_true, p.shape[1])
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
    p = _proba(proba)
    y = _labels(y_true, p.shape[1])
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
    y = _labels(y_true, z.shape[1])
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
    p = _proba(proba)
    y = _labels(y_true, k)
    if p.shape != (len(y), k):
        raise ValueError(f"proba must have shape ({len(y)}, {k}), got {p.shape}")
    n = len(y)
    if n == 0:
        raise ValueError("evaluate needs at least one sample")

    y_pred = p.argmax(axis=1)
    cm = np.zeros((k, k), dtype=np.int64)
    np.add.at(cm, (y, y_pred), 1)

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


def _paper_value(paper: Mapping[Any, float], name: Any, backbone: Any, method: Any) -> float | None:
    """Look a model up by name, by (backbone, method), or by 'backbone/method'."""
    for key in (name, (backbone, method), f"{backbone}/{method}"):
        try:
            if key in paper:
                return float(paper[key])
        except TypeError:  # unhashable key in a user-supplied entry
            continue
    return None


def comparison_table(
    models: Sequence[Mapping[str, Any]],
    paper: Mapping[Any, float] | None = ACCURACY,
) -> pd.DataFrame:
    """One row per model: name, backbone, method, test_accuracy, balanced_accuracy (+ paper).

    ``paper`` maps (backbone, method) tuples, model names, or "backbone/method"
    strings to published accuracies; a ``paper`` and a ``delta_vs_paper`` column
    are added when at least one model has a reference number. ``None`` disables it.
    An ``accuracy_ci95`` pair in a model entry becomes ``ci_lo``/``ci_hi``; other
    scalar entries are kept as extra columns.
    """
    base = ["name", "backbone", "method", "test_accuracy", "balanced_accuracy"]
    rows = []
    for m in models:
        row: dict[str, Any] = {key: m.get(key) for key in base}
        ci = m.get("accuracy_ci95")
        if ci is not None and len(ci) == 2:
            row["ci_lo"], row["ci_hi"] = float(ci[0]), float(ci[1])
        for key, value in m.items():
            if key not in row and key != "accuracy_ci95" and _is_scalar(value):
                row[key] = value
        if paper is not None:
            row["paper"] = _paper_value(paper, m.get("name"), m.get("backbone"), m.get("method"))
        rows.append(row)

    df = pd.DataFrame(rows)
    if df.empty:
        return pd.DataFrame(columns=base)
    for col in ("test_accuracy", "balanced_accuracy"):
        df[col] = pd.to_numeric(df[col], errors="coerce").astype(float)
    if "paper" in df.columns:
        if df["paper"].notna().any():
            df["paper"] = pd.to_numeric(df["paper"], errors="coerce").astype(float)
            df["delta_vs_paper"] = df["test_accuracy"] - df["paper"]
        else:
            df = df.drop(columns="paper")
    front = [c for c in base + ["ci_lo", "ci_hi", "paper", "delta_vs_paper"] if c in df.columns]
    return df[front + [c for c in df.columns if c not in front]]


def shared_mistakes(
    y_true: Any, probas: Sequence[Any], paths: Sequence[Any], classes: Sequence[str]
) -> pd.DataFrame:
    """The cells that several networks of one recipe (one per training seed) get wrong.

    One row per cell at least one of ``probas`` misclassifies, in the columns of
    :func:`misclassified` plus ``n_wrong`` (how many networks got it wrong) and ``n_models``;
    cells every network gets wrong first, then by confidence. ``pred`` is the commonest wrong
    answer (ties: the one the networks' mean probability ranks higher), ``confidence`` and
    ``p_true`` the mean probabilities of it and of the true class. Mistakes all seeds share
    are a floor that neither another seed nor averaging the seeds removes: ambiguous cells
    or wrong labels.
    """
    ps = [_proba(p) for p in probas]
    if not ps:
        raise ValueError("shared_mistakes needs the probabilities of at least one model")
    if any(p.shape != ps[0].shape for p in ps):
        raise ValueError("every model must be scored on the same cells (same shapes)")
    y = _labels(y_true, len(classes))
    if not (len(y) == len(ps[0]) == len(paths)):
        raise ValueError("y_true, probas and paths must have the same length")
    mean = np.mean(ps, axis=0)
    preds = np.stack([p.argmax(axis=1) for p in ps])  # (models, cells)
    wrong = preds != y
    cells = np.flatnonzero(wrong.any(axis=0))
    # Votes for each wrong class, the mean probability breaking ties (always below 1).
    pred = np.array(
        [
            np.argmax(np.bincount(preds[wrong[:, i], i], minlength=len(classes)) + mean[i])
            for i in cells
        ],
        dtype=int,
    )
    df = _mistake_frame(cells, paths, y[cells], pred, mean[cells], classes)
    df["n_wrong"] = wrong[:, cells].sum(axis=0).astype(int)
    df["n_models"] = len(ps)
    df = df.sort_values(["n_wrong", "confidence"], ascending=[False, False], kind="stable")
    df = df.reset_index(drop=True)
    df.attrs["n_models"] = len(ps)  # also when no cell is wrong (no rows to carry it)
    return df


def _is_scalar(value: Any) -> bool:
    return value is None or isinstance(value, (str, bool, int, float, np.integer, np.floating))


def _mistake_frame(
    index: np.ndarray,
    paths: Sequence[Any],
    true: np.ndarray,
    pred: np.ndarray,
    proba: np.ndarray,
    classes: Sequence[str],
) -> pd.DataFrame:
    """The columns of :func:`misclassified` for the cells ``index`` (positions in ``paths``),
    with their true and predicted class indices and probability rows."""
    names = np.asarray([str(c) for c in classes], dtype=object)
    true, pred = np.asarray(true, dtype=int), np.asarray(pred, dtype=int)
    rows = np.arange(len(index))
    return pd.DataFrame(
        {
            "index": index,
            "path": [str(paths[i]) for i in index],
            "true": names[true],
            "pred": names[pred],
            "true_idx": true,
            "pred_idx": pred,
            "confidence": proba[rows, pred],
            "p_true": proba[rows, true],
        }
    )


def misclassified(
    y_true: Any,
    y_pred: Any,
    proba: Any,
    paths: Sequence[Any],
    classes: Sequence[str],
    limit: int | None = None,
) -> pd.DataFrame:
    """The wrongly classified samples, most confident mistakes first.

    Columns: index (position in the test set), path, true, pred, true_idx,
    pred_idx, confidence (probability of the wrong prediction), p_true.
    ``y_pred=None`` uses ``argmax(proba)``.
    """
    p = _proba(proba)
    y = _labels(y_true, len(classes))
    pred = p.argmax(axis=1) if y_pred is None else _labels(y_pred, len(classes))
    if not (len(y) == len(pred) == len(p) == len(paths)):
        raise ValueError("y_true, y_pred, proba and paths must have the same length")
    wrong = np.flatnonzero(y != pred)
    df = _mistake_frame(wrong, paths, y[wrong], pred[wrong], p[wrong], classes)
    df = df.sort_values("confidence", ascending=False, kind="stable").reset_index(drop=True)
    return df if limit is None else df.head(limit)
