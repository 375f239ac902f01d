"""Design 1 of the paper: an SVM on frozen ImageNet features (power-normalised, standardised).

Model selection (kernel, C, gamma) is cross-validated on the training split
only; the validation and test splits are never seen until the refit model is
scored.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import joblib
import numpy as np
import pandas as pd
import skops.io as sio
from sklearn.calibration import CalibratedClassifierCV
from sklearn.model_selection import GridSearchCV, StratifiedKFold
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import FunctionTransformer, StandardScaler
from sklearn.svm import SVC

from bloodlib.core.config import DEFAULT_SEED
from bloodlib.core.errors import UnsafeModelError
from bloodlib.core.io import write_with

# On the dev data (Lite0 features, 70/10/20 split, seed 42) the linear kernel wins at
# C ~ 1e-3 to 3e-3; the grid brackets that range on both sides.
DEFAULT_GRID: list[dict] = [
    {"svc__kernel": ["rbf"], "svc__C": [1.0, 10.0, 100.0], "svc__gamma": ["scale"]},
    {"svc__kernel": ["linear"], "svc__C": [3e-4, 1e-3, 3e-3, 1e-2, 3e-2]},
]


def signed_sqrt(x: np.ndarray) -> np.ndarray:
    """Power normalisation: tames the few large activations that dominate pooled CNN features.

    On the dev data's validation split it lifted a linear SVM from 89.9 % to 91.5 %.
    """
    return np.sign(x) * np.sqrt(np.abs(x))


@dataclass
class SVMResult:
    model: Pipeline
    best_params: dict
    cv_score: float
    cv_table: pd.DataFrame


def _features_steps() -> list:
    return [("power", FunctionTransformer(signed_sqrt)), ("scale", StandardScaler())]


def make_pipeline(seed: int = DEFAULT_SEED) -> Pipeline:
    return Pipeline([*_features_steps(), ("svc", SVC(class_weight="balanced", random_state=seed))])


def fit_svm(
    X: np.ndarray,
    y: np.ndarray,
    *,
    grid: list[dict] | None = None,
    cv: int = 3,
    seed: int = DEFAULT_SEED,
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
    svc = make_pipeline(seed).set_params(**best).named_steps["svc"]
    # Platt scaling on 5-fold out-of-fold decisions, then one SVC on all rows (ensemble=False):
    # what SVC(probability=True) did, which scikit-learn 1.9 deprecates.
    folds = min(5, int(np.bincount(np.unique(y, return_inverse=True)[1]).min()))
    if folds < 2:
        raise ValueError("every class needs at least 2 training images to calibrate the SVM")
    calibrated = CalibratedClassifierCV(
        svc,
        method="sigmoid",
        cv=StratifiedKFold(folds, shuffle=True, random_state=seed),
        ensemble=False,
    )
    model = Pipeline([*_features_steps(), ("svc", calibrated)])
    model.fit(X, y)
    table = pd.DataFrame(search.cv_results_)[["params", "mean_test_score", "std_test_score"]]
    table = table.sort_values("mean_test_score", ascending=False).reset_index(drop=True)
    return SVMResult(model, best, float(search.best_score_), table)


def predict_proba(model: Pipeline, X: np.ndarray, n_classes: int) -> np.ndarray:
    """Probabilities in columns 0..n_classes-1, whatever classes the training split held.

    ``predict_proba`` only has columns for classes seen in training; a class
    missing there gets probability 0 instead of shifting every later column.
    """
    proba = model.predict_proba(X)
    full = np.zeros((len(proba), n_classes), dtype=np.float64)
    full[:, np.asarray(model.classes_, dtype=int)] = proba
    return full


#: The types a fitted bloodlib SVM pipeline holds beyond those skops trusts by default (its
#: audited scikit-learn estimators, NumPy arrays, builtins). Computed once with
#: ``skops.io.get_untrusted_types`` on a fitted ``fit_svm`` pipeline (skops 0.16,
#: scikit-learn 1.9; linear and RBF kernels give the same list). ``signed_sqrt`` is a
#: reference to this module's function, resolved by import, never code from the file.
#: Anything else in a file is refused: extend this list only after reading what it loads.
TRUSTED_TYPES: tuple[str, ...] = (
    "bloodlib.models.svm.signed_sqrt",
    "sklearn.calibration._CalibratedClassifier",
    "sklearn.calibration._SigmoidCalibration",
    "sklearn.model_selection._split.StratifiedKFold",
)


#: Module names that SVMs saved by an older bloodlib record, and the module that now holds
#: what they name. skops resolves a function by importing its module by name; before
#: issue 31 this module was ``bloodlib.svm``.
LEGACY_MODULES: dict[str, str] = {"bloodlib.svm": __name__}
#: :data:`TRUSTED_TYPES` as those older files name them (the same functions).
LEGACY_TYPES: tuple[str, ...] = ("bloodlib.svm.signed_sqrt",)
#: Everything a loadable file may hold.
LOADABLE_TYPES: tuple[str, ...] = TRUSTED_TYPES + LEGACY_TYPES


def save(model: Pipeline, path: str | Path) -> Path:
    """Write the pipeline with skops (atomically): a format that cannot run code on load."""

    return write_with(path, lambda p: sio.dump(model, p), suffix=".skops")


def load(path: str | Path) -> Pipeline:
    """A pipeline saved by :func:`save`; a file holding any type outside the trusted ones is refused."""

    try:
        found = set(sio.get_untrusted_types(file=path))
    except Exception as exc:  # noqa: BLE001 (any parse failure: not a skops file we can read)
        raise UnsafeModelError(f"{path} is not a readable skops file ({exc})") from exc
    if found - set(LOADABLE_TYPES):
        raise UnsafeModelError(
            f"{path} holds types a bloodlib SVM never contains: "
            f"{', '.join(sorted(found - set(LOADABLE_TYPES)))}; refusing to load it"
        )
    try:
        with _legacy_module_names():
            model = sio.load(path, trusted=list(LOADABLE_TYPES))
    except Exception as exc:  # noqa: BLE001 (skops refuses or fails: the file is at fault)
        raise UnsafeModelError(f"{path}: skops could not load it safely ({exc})") from exc
    return _checked(model, path)


@contextmanager
def _legacy_module_names() -> Iterator[None]:
    """While a file loads, let its old module names import as the modules that replaced them.

    Only for the duration of the load, and never over a module that really exists under the
    old name: nothing else in the process sees the aliases.
    """
    added = [old for old in LEGACY_MODULES if old not in sys.modules]
    for old in added:
        sys.modules[old] = sys.modules[LEGACY_MODULES[old]]
    try:
        yield
    finally:
        for old in added:
            sys.modules.pop(old, None)


def load_pickle(path: str | Path) -> Pipeline:
    """An SVM pickled by an older bloodlib (``.joblib``). Unpickling runs code from the file:
    call this only for a file the user said they trust (``--trust-pickle``)."""

    return _checked(joblib.load(path), path)


def _checked(model: object, path: str | Path) -> Pipeline:
    if not isinstance(model, Pipeline) or not hasattr(model, "predict_proba"):
        raise UnsafeModelError(
            f"{path} holds a {type(model).__name__}, not a bloodlib SVM pipeline"
        )
    return model
