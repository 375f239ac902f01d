"""A model scored on the test split (:class:`Evaluation`), and the run's ``metrics.json``.

``metrics.json`` is what the runner prints, the README's tables are built from, and every
later notebook reads: ``{"models": [entry, ...], ...}``, one entry per model (and per model
with test-time augmentation), each with at least ``name``, ``backbone``, ``method``,
``tta``, ``test_accuracy``, ``balanced_accuracy``, ``per_class``, ``n_test`` and
``model_path`` (relative to the run folder).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from bloodlib import CLASS_INDEX
from bloodlib.core.io import read_json, write_json


@dataclass
class Evaluation:
    """One model scored on the test split.

    ``metrics`` is its ``metrics.json`` entry; the arrays follow the rows of ``test``
    (the test split in ``split.csv`` order).
    """

    metrics: dict[str, Any]
    test: pd.DataFrame
    y_true: np.ndarray
    proba: np.ndarray
    proba_scaled: np.ndarray  # after temperature scaling fitted on the validation split
    predictions: np.ndarray
    #: Validation probabilities and labels (unscaled), for choices made after training.
    proba_val: np.ndarray | None = None
    y_val: np.ndarray | None = None

    @property
    def name(self) -> str:
        return str(self.metrics["name"])

    @property
    def correct(self) -> np.ndarray:
        return self.predictions == self.y_true


def label_indices(labels: pd.Series) -> np.ndarray:
    return labels.map(CLASS_INDEX).to_numpy()


def write_metrics(
    run_dir: str | Path, results: Sequence[Evaluation | Mapping[str, Any]], **extra: Any
) -> Path:
    """``metrics.json``: ``{"models": [entry, ...], **extra}`` (entries of ``results``)."""
    models = [dict(r.metrics if isinstance(r, Evaluation) else r) for r in results]
    return write_json(Path(run_dir) / "metrics.json", {"models": models, **extra})


def read_metrics(run_dir: str | Path) -> dict[str, Any]:
    return read_json(Path(run_dir) / "metrics.json")


def same_test_cells(results: Sequence[Evaluation]) -> int:
    """The number of test cells every result was scored on; raises if they differ."""
    if not results:
        raise ValueError("no results to compare")
    first = results[0].test["path"].tolist()
    for r in results[1:]:
        if r.test["path"].tolist() != first:
            raise ValueError(f"{r.name} was scored on other test cells than {results[0].name}")
    return len(first)
