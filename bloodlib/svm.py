"""Design 1 of the paper: an SVM on frozen ImageNet features.

Model selection (kernel, C, gamma) is cross-validated on the training split
only; the validation and test splits are never seen until the refit model is
scored.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import joblib
import numpy as np
import pandas as pd
from sklearn.model_selection import GridSearchCV, StratifiedKFold
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC

from bloodlib.io import write_with

DEFAULT_GRID: list[dict] = [
    {"svc__kernel": ["rbf"], "svc__C": [1.0, 10.0, 100.0], "svc__gamma": ["scale"]},
    {"svc__kernel": ["linear"], "svc__C": [0.001, 0.01, 0.1]},
]


@dataclass
class SVMResult:
    model: Pipeline
    best_params: dict
    cv_score: float
    cv_table: pd.DataFrame


def make_pipeline(seed: int = 42) -> Pipeline:
    return Pipeline(
        [("scale", StandardScaler()), ("svc", SVC(class_weight="balanced", random_state=seed))]
    )


def fit_svm(
    X: np.ndarray,
    y: np.ndarray,
    *,
    grid: list[dict] | None = None,
    cv: int = 3,
    seed: int = 42,
    n_jobs: int = -1,
) -> SVMResult:
    """Grid-search on (X, y) with stratified CV, then refit the best with probabilities.

    Probabilities (Platt scaling) are only switched on for the final refit:
    they multiply the cost of every CV fit and do not change the ranking.
    """
    search = GridSearchCV(
        make_pipeline(seed),
        grid or DEFAULT_GRID,
        cv=StratifiedKFold(n_splits=cv, shuffle=True, random_state=seed),
        scoring="accuracy",
        n_jobs=n_jobs,
        refit=False,
    )
    search.fit(X, y)
    best = search.best_params_
    model = make_pipeline(seed).set_params(**best, svc__probability=True)
    model.fit(X, y)
    table = pd.DataFrame(search.cv_results_)[["params", "mean_test_score", "std_test_score"]]
    table = table.sort_values("mean_test_score", ascending=False).reset_index(drop=True)
    return SVMResult(model, best, float(search.best_score_), table)


def save(model: Pipeline, path: str | Path) -> Path:
    return write_with(path, lambda p: joblib.dump(model, p), suffix=".joblib")


def load(path: str | Path) -> Pipeline:
    return joblib.load(path)
