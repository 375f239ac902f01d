"""Design 1: grid-searched SVM on features; save/load."""

from __future__ import annotations

import os

import numpy as np
import pytest
from sklearn.datasets import make_blobs
from sklearn.model_selection import train_test_split

from bloodlib.models import svm

pytestmark = pytest.mark.unit

SMALL_GRID = [
    {"svc__kernel": ["rbf"], "svc__C": [1.0, 10.0], "svc__gamma": ["scale"]},
    {"svc__kernel": ["linear"], "svc__C": [0.01]},
]


@pytest.fixture(scope="module")
def blobs():
    X, y = make_blobs(n_samples=240, centers=8, n_features=16, cluster_std=1.5, random_state=0)
    return train_test_split(X, y, test_size=0.25, stratify=y, random_state=0)


@pytest.fixture(scope="module")
def fitted(blobs):
    X_train, _, y_train, _ = blobs
    return svm.fit_svm(X_train, y_train, cv=3, seed=0, n_jobs=1)


def test_separable_blobs_are_learned(blobs, fitted):
    _, X_test, _, y_test = blobs
    assert (fitted.model.predict(X_test) == y_test).mean() > 0.95
    assert fitted.cv_score > 0.95


def test_probabilities(blobs, fitted):
    _, X_test, _, y_test = blobs
    proba = fitted.model.predict_proba(X_test)
    assert proba.shape == (len(X_test), 8)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, atol=1e-6)
    assert (proba >= 0).all()
    assert (proba.argmax(axis=1) == y_test).mean() > 0.9
    assert list(fitted.model.classes_) == list(range(8))


def test_best_params_come_from_the_grid(fitted):
    grid = list(fitted.cv_table["params"])
    n_default = sum(int(np.prod([len(v) for v in g.values()])) for g in svm.DEFAULT_GRID)
    assert len(fitted.cv_table) == n_default
    assert fitted.best_params in grid
    assert fitted.cv_table["params"].iloc[0] == fitted.best_params  # sorted best first
    assert fitted.cv_table["mean_test_score"].iloc[0] == pytest.approx(fitted.cv_score)
    assert fitted.cv_table["mean_test_score"].is_monotonic_decreasing
    calibrated = fitted.model.named_steps["svc"]
    assert calibrated.method == "sigmoid"  # Platt scaling, only on the refit
    svc = calibrated.calibrated_classifiers_[0].estimator
    assert len(calibrated.calibrated_classifiers_) == 1  # one SVC on all rows, not an ensemble
    assert svc.kernel == fitted.best_params["svc__kernel"]
    assert svc.C == fitted.best_params["svc__C"]
    assert svc.class_weight == "balanced"


def test_missing_class_keeps_columns_aligned(blobs):
    X_train, X_test, y_train, _ = blobs
    keep = y_train != 3  # class 3 never seen in training
    result = svm.fit_svm(
        X_train[keep],
        y_train[keep],
        grid=[{"svc__kernel": ["linear"], "svc__C": [0.1]}],
        cv=2,
        n_jobs=1,
    )
    proba = svm.predict_proba(result.model, X_test, 8)
    assert proba.shape == (len(X_test), 8)
    assert np.all(proba[:, 3] == 0)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0)


def test_custom_grid(blobs):
    X_train, _, y_train, _ = blobs
    grid = [{"svc__kernel": ["linear"], "svc__C": [0.1]}]
    result = svm.fit_svm(X_train, y_train, grid=grid, cv=2, seed=0, n_jobs=1)
    assert result.best_params == {"svc__kernel": "linear", "svc__C": 0.1}
    assert len(result.cv_table) == 1


def test_refit_sees_the_training_data_only(blobs, fitted):
    X_train, _, y_train, _ = blobs
    # fit_svm only receives (X, y); the refit model has seen exactly those rows.
    assert fitted.model.named_steps["scale"].n_samples_seen_ == len(X_train)
    assert fitted.model.named_steps["scale"].n_features_in_ == X_train.shape[1]
    np.testing.assert_allclose(
        fitted.model.named_steps["scale"].mean_, svm.signed_sqrt(X_train).mean(axis=0)
    )


def test_deterministic_for_a_seed(blobs):
    X_train, X_test, y_train, _ = blobs
    a = svm.fit_svm(X_train, y_train, grid=SMALL_GRID, cv=3, seed=5, n_jobs=1)
    b = svm.fit_svm(X_train, y_train, grid=SMALL_GRID, cv=3, seed=5, n_jobs=1)
    assert a.best_params == b.best_params
    np.testing.assert_allclose(a.model.predict_proba(X_test), b.model.predict_proba(X_test))


def test_save_load_round_trip(blobs, fitted, tmp_path):
    _, X_test, _, _ = blobs
    path = tmp_path / "models" / "m.skops"
    assert svm.save(fitted.model, path) == path
    assert os.listdir(path.parent) == ["m.skops"]  # atomic: no temp file left
    loaded = svm.load(path)
    np.testing.assert_array_equal(loaded.predict(X_test), fitted.model.predict(X_test))
    np.testing.assert_allclose(loaded.predict_proba(X_test), fitted.model.predict_proba(X_test))


def test_signed_sqrt_keeps_sign_and_order():
    x = np.array([-4.0, -1.0, 0.0, 0.25, 9.0])
    np.testing.assert_allclose(svm.signed_sqrt(x), [-2.0, -1.0, 0.0, 0.5, 3.0])
