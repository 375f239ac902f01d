"""bloodlib.train.design1: design 1 from features to a saved, scored SVM."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
from sklearn.datasets import make_blobs

from bloodlib import CLASSES
from bloodlib.models.saved import read_sidecar
from bloodlib.train import design1

pytestmark = pytest.mark.unit

GRID = [
    {"svc__kernel": ["linear"], "svc__C": [0.01, 1.0]},
    {"svc__kernel": ["rbf"], "svc__C": [1.0], "svc__gamma": ["scale"]},
]


@pytest.fixture(scope="module")
def data():
    X, y = make_blobs(n_samples=160, centers=8, n_features=12, cluster_std=1.0, random_state=1)
    parts = np.array(["train"] * 10 + ["val"] * 4 + ["test"] * 6)
    split = pd.DataFrame(
        {
            "path": [f"/cells/{i}.jpg" for i in range(len(y))],
            "sha256": [f"{i:064x}" for i in range(len(y))],
            "label": [CLASSES[k] for k in y],
            # every class gets 10 train, 4 val and 6 test rows
            "split": [parts[i] for i in pd.Series(y).groupby(y).cumcount()],
        }
    )
    fs = SimpleNamespace(features=X.astype(np.float32), key="k" * 16, from_cache=True)
    return split, fs


@pytest.fixture(scope="module")
def result(data, tmp_path_factory):
    split, fs = data
    run = tmp_path_factory.mktemp("run")
    return design1.fit_and_save(
        "efficientnet_lite0", fs, split, run, image_size=64, cv=3, seed=0, grid=GRID, n_jobs=1
    )


def test_labels_follow_the_class_index(data):
    split, _ = data
    y = design1.labels(split)
    assert [CLASSES[k] for k in y] == split["label"].tolist()


def test_separable_features_are_learned_and_scored_on_val_and_test(result):
    assert set(result.scores) == {"val", "test"}
    assert result.test_accuracy > 0.95
    assert np.asarray(result.test_metrics["confusion"]).sum() == 48  # 6 test rows x 8
    assert result.feature_dim == 12 and result.image_size == 64


def test_model_and_sidecar_are_saved(result):
    assert result.model_path.suffix == ".skops" and result.model_path.is_file()
    info = read_sidecar(result.model_path)
    assert info["method"] == "svm" and info["classes"] == list(CLASSES)
    assert info["svm_params"] == result.best_params
    assert info["train_images"] == 80
    # What it learnt from, so that scoring can refuse it on another split (issue 35).
    assert info["trained_on"]["n_train"] == 80 and info["trained_on"]["n_val"] > 0


def test_cv_table_is_readable_and_ranked(result):
    table = design1.cv_table(result)
    assert {"kernel", "C", "cv_accuracy", "cv_std"} <= set(table.columns)
    assert len(table) == 3  # one row per grid point
    assert table["cv_accuracy"].is_monotonic_decreasing
    assert table["cv_accuracy"].iloc[0] == pytest.approx(result.cv_accuracy)
    assert table["chosen"].sum() == 1 and table["chosen"].iloc[0]
