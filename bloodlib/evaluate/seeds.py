"""Training seeds: the spread of a recipe's accuracy over seeds on one split, and the test
cells every seed gets wrong (the floor that training again does not lift).

Metrics entries of one recipe pool by :func:`seed_group` (the ``_seed<N>`` models of a run
with their first seed's); an ensemble of the seeds is an average, never one more seed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from bloodlib import CLASSES
from bloodlib.core.config import split_seed_name
from bloodlib.evaluate import mistakes
from bloodlib.evaluate.results import Evaluation, same_test_cells

#: Keys of each :func:`seed_spread` row, in order.
SPREAD_KEYS = (
    "name",
    "model",
    "backbone",
    "method",
    "tta",
    "n_seeds",
    "seeds",
    "accuracy_mean",
    "accuracy_std",
    "balanced_accuracy_mean",
    "balanced_accuracy_std",
)


#: Columns of :func:`seed_table`, in order (the name says which model, and whether TTA).
SEED_TABLE_COLUMNS = (
    "name",
    "n_seeds",
    "seeds",
    "accuracy_mean",
    "accuracy_std",
    "ci_lo",
    "ci_hi",
    "ci_width",
    "balanced_accuracy_mean",
    "balanced_accuracy_std",
)


def _mean_std(values: Sequence[float]) -> tuple[float, float | None]:
    x = np.asarray(values, dtype=np.float64)
    # ddof=1: the seeds are a sample of the training runs the recipe could give.
    return float(x.mean()), (float(x.std(ddof=1)) if len(x) > 1 else None)


def seed_group(entry: Mapping[str, Any]) -> tuple[str, bool]:
    """``(model, tta)``: which model a metrics entry is one training seed of. ``model`` is the
    first seed's model name (its file stem without ``_seed<N>``), so two different recipes of
    one backbone (e.g. ``_finetune`` and ``_robust``) never pool into one spread."""

    tta = bool(entry.get("tta"))
    path = entry.get("model_path")
    if path:
        stem = Path(path).stem
    else:  # an entry without its file: its name, less the TTA suffix
        stem = str(entry["name"]).removesuffix("_tta") if tta else str(entry["name"])
    return split_seed_name(stem)[0], tta


def seed_members(
    entries: Sequence[Mapping[str, Any]], row: Mapping[str, Any]
) -> list[Mapping[str, Any]]:
    """The entries of one :func:`seed_spread` row, in ``entries`` order."""
    return [e for e in entries if seed_group(e) == (row["model"], bool(row["tta"]))]


def seed_spread(entries: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Mean and standard deviation (ddof=1; ``None`` for one seed) over training seeds.

    One row per model and TTA (:func:`seed_group`: the ``_seed<N>`` models of a run pool with
    their first seed's), in the order the groups first appear in ``entries`` (metrics entries
    with ``seed``, ``test_accuracy`` and ``balanced_accuracy``); ``name`` is the group's first
    entry (the first seed's model when it comes first). Keys: :data:`SPREAD_KEYS`. Two entries
    of one group with the same seed are an error: the same training counted twice would shrink
    the spread. An ensemble's entry (``ensemble`` set: an average of the seeds, not one more
    of them) is left out.
    """
    groups: dict[tuple, list[Mapping[str, Any]]] = {}
    for e in entries:
        if not e.get("ensemble"):
            groups.setdefault(seed_group(e), []).append(e)
    rows = []
    for (model, tta), members in groups.items():
        seeds = [m.get("seed") for m in members]
        if len(set(seeds)) < len(seeds):
            raise ValueError(
                f"{model}{' tta' if tta else ''}: seeds {seeds} repeat; score each training "
                "seed once (scoring.seed_models picks one model per seed)"
            )
        acc_mean, acc_std = _mean_std([m["test_accuracy"] for m in members])
        bal_mean, bal_std = _mean_std([m["balanced_accuracy"] for m in members])
        rows.append(
            {
                "name": members[0]["name"],
                "model": model,
                "backbone": members[0]["backbone"],
                "method": members[0]["method"],
                "tta": tta,
                "n_seeds": len(members),
                "seeds": seeds,
                "accuracy_mean": acc_mean,
                "accuracy_std": acc_std,
                "balanced_accuracy_mean": bal_mean,
                "balanced_accuracy_std": bal_std,
            }
        )
    return rows


def seed_table(
    spread: Sequence[Mapping[str, Any]], entries: Sequence[Mapping[str, Any]]
) -> pd.DataFrame:
    """:func:`seed_spread` rows as a table, beside the first seed's bootstrap interval
    (``ci_lo``, ``ci_hi``, ``ci_width``, looked up by ``name`` in ``entries``). Columns:
    :data:`SEED_TABLE_COLUMNS`."""
    by_name = {e["name"]: e for e in entries}
    rows = []
    for row in spread:
        ci = (by_name.get(row["name"]) or {}).get("accuracy_ci95") or (np.nan, np.nan)
        rows.append(
            {
                **row,
                "seeds": ", ".join(str(s) for s in row["seeds"]),
                "ci_lo": float(ci[0]),
                "ci_hi": float(ci[1]),
                "ci_width": float(ci[1]) - float(ci[0]),
            }
        )
    return pd.DataFrame(rows, columns=list(SEED_TABLE_COLUMNS))


def seed_mistakes(results: Sequence[Evaluation]) -> dict[str, pd.DataFrame]:
    """:func:`bloodlib.evaluate.mistakes.shared_mistakes` of every model trained with several seeds.

    Keyed by the first seed's model name; plain predictions only (a TTA entry is the same
    network), ensembles left out (an average of the seeds, not one more of them). Models
    with one seed are left out: there is nothing to share.
    """
    groups: dict[str, list[Evaluation]] = {}
    for r in results:
        if not r.metrics.get("tta") and not r.metrics.get("ensemble"):
            groups.setdefault(seed_group(r.metrics)[0], []).append(r)
    out = {}
    for members in groups.values():
        if len(members) < 2:
            continue
        same_test_cells(members)
        first = members[0]
        out[first.name] = mistakes.shared_mistakes(
            first.y_true, [m.proba for m in members], first.test["path"].tolist(), list(CLASSES)
        )
    return out


def seed_mistakes_record(
    mistakes: Mapping[str, pd.DataFrame], test: pd.DataFrame
) -> list[dict[str, Any]]:
    """:func:`seed_mistakes` for ``metrics.json``: per model, how many test cells some seed
    and every seed got wrong, and which (``relpath`` of ``test``, the split's test rows)."""
    names = test["relpath"] if "relpath" in test.columns else test["path"]
    rows = []
    for name, df in mistakes.items():
        every = df[df["n_wrong"] == df["n_models"]]
        rows.append(
            {
                "name": name,
                "n_models": int(df.attrs["n_models"]),
                "n_test": len(test),
                "wrong_for_some_seed": len(df),
                "wrong_for_every_seed": len(every),
                "every_seed_wrong": [
                    {"relpath": str(names.iloc[i]), "true": t, "pred": p}
                    for i, t, p in zip(every["index"], every["true"], every["pred"], strict=True)
                ],
            }
        )
    return rows
