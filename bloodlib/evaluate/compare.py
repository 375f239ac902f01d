"""Models side by side: a table of their scores, and two models compared on the same cells.

A ranking between two models scored on the same test cells is read from their paired
difference (:func:`paired_comparison`: the bootstrap of the difference and McNemar's exact
test), never from whether their separate intervals overlap.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from scipy.stats import binomtest

from bloodlib.core.config import DEFAULT_SEED
from bloodlib.core.paper import ACCURACY
from bloodlib.evaluate.arrays import boot_indices
from bloodlib.evaluate.results import Evaluation, same_test_cells


def _is_scalar(value: Any) -> bool:
    return value is None or isinstance(value, (str, bool, int, float, np.integer, np.floating))


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


@dataclass
class PairedComparison:
    """Two models' answers on the same cells: accuracy difference ``b - a`` and its uncertainty."""

    n: int
    accuracy_a: float
    accuracy_b: float
    difference: float  # accuracy_b - accuracy_a
    ci95: tuple[float, float]  # paired percentile bootstrap of the difference
    only_a: int  # cells a gets right and b wrong
    only_b: int  # cells b gets right and a wrong
    p_mcnemar: float  # exact two-sided McNemar test on the discordant cells


def paired_comparison(
    y_true: Any,
    pred_a: Any,
    pred_b: Any,
    *,
    n_boot: int = 1000,
    seed: int = DEFAULT_SEED,
) -> PairedComparison:
    """Compare two sets of predictions on the same cells.

    The bootstrap resamples cells (both models keep their answers on each drawn cell), so
    the interval reflects only the cells on which they disagree. McNemar's exact test asks
    whether ``only_b`` vs ``only_a`` is more lopsided than 50/50 chance would make it.
    """

    y = np.asarray(y_true)
    ca = np.asarray(pred_a) == y
    cb = np.asarray(pred_b) == y
    n = len(y)
    if n == 0 or len(ca) != n or len(cb) != n:
        raise ValueError("y_true, pred_a and pred_b must have the same, non-zero length")
    if n_boot < 1:
        raise ValueError("n_boot must be >= 1")
    delta = cb.astype(np.float64) - ca.astype(np.float64)
    diffs = [delta[idx].mean(axis=1) for idx in boot_indices(n, n_boot, seed)]
    lo, hi = np.percentile(np.concatenate(diffs), [2.5, 97.5])
    only_a, only_b = int((ca & ~cb).sum()), int((cb & ~ca).sum())
    discordant = only_a + only_b
    p = binomtest(min(only_a, only_b), discordant, 0.5).pvalue if discordant else 1.0
    return PairedComparison(
        n=n,
        accuracy_a=float(ca.mean()),
        accuracy_b=float(cb.mean()),
        difference=float(delta.mean()),
        ci95=(float(lo), float(hi)),
        only_a=only_a,
        only_b=only_b,
        p_mcnemar=float(p),
    )


def leader_and_runner_up(
    results: Sequence[Evaluation], *, n_boot: int = 1000, seed: int = DEFAULT_SEED
) -> tuple[str, str, PairedComparison] | None:
    """The two most accurate of ``results`` compared on their common test cells
    (:func:`paired_comparison`, ``a`` the runner-up, ``b`` the leader); None for fewer than two
    models or models scored on different cells, where no paired test applies."""
    ranked = sorted(results, key=lambda r: r.metrics["test_accuracy"], reverse=True)
    if len(ranked) < 2:
        return None
    best, second = ranked[0], ranked[1]
    try:
        same_test_cells([best, second])
    except ValueError:  # scored on other cells: no paired test applies
        return None
    paired = paired_comparison(
        best.y_true, second.predictions, best.predictions, n_boot=n_boot, seed=seed
    )
    return best.name, second.name, paired


def tta_gains(
    results: Sequence[Evaluation], *, n_boot: int = 1000, seed: int = DEFAULT_SEED
) -> pd.DataFrame:
    """Plain vs test-time-augmented predictions of each fine-tuned network, paired per cell.

    Columns: model, n, plain, tta, gain, ci_lo, ci_hi, fixed (cells TTA got right that the
    plain model got wrong), broken (the reverse), p_mcnemar. Empty without TTA entries.
    """
    plain = {r.metrics["model_path"]: r for r in results if not r.metrics.get("tta")}
    rows = []
    for r in results:
        base = plain.get(r.metrics["model_path"])
        if not r.metrics.get("tta") or base is None:
            continue
        c = paired_comparison(r.y_true, base.predictions, r.predictions, n_boot=n_boot, seed=seed)
        rows.append(
            {
                "model": base.name,
                "n": c.n,
                "plain": c.accuracy_a,
                "tta": c.accuracy_b,
                "gain": c.difference,
                "ci_lo": c.ci95[0],
                "ci_hi": c.ci95[1],
                "fixed": c.only_b,
                "broken": c.only_a,
                "p_mcnemar": c.p_mcnemar,
            }
        )
    columns = ["model", "n", "plain", "tta", "gain", "ci_lo", "ci_hi", "fixed", "broken"]
    return pd.DataFrame(rows, columns=[*columns, "p_mcnemar"])
