"""The test cells a model gets wrong, and those several models (training seeds) all miss.

Frames a notebook can show as galleries (``bloodlib.teach.plots``): one row per cell, with
its true class, the model's answer and how confident it was.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from bloodlib.evaluate.arrays import as_labels, as_proba


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
    ps = [as_proba(p) for p in probas]
    if not ps:
        raise ValueError("shared_mistakes needs the probabilities of at least one model")
    if any(p.shape != ps[0].shape for p in ps):
        raise ValueError("every model must be scored on the same cells (same shapes)")
    y = as_labels(y_true, len(classes))
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
    p = as_proba(proba)
    y = as_labels(y_true, len(classes))
    pred = p.argmax(axis=1) if y_pred is None else as_labels(y_pred, len(classes))
    if not (len(y) == len(pred) == len(p) == len(paths)):
        raise ValueError("y_true, y_pred, proba and paths must have the same length")
    wrong = np.flatnonzero(y != pred)
    df = _mistake_frame(wrong, paths, y[wrong], pred[wrong], p[wrong], classes)
    df = df.sort_values("confidence", ascending=False, kind="stable").reset_index(drop=True)
    return df if limit is None else df.head(limit)
