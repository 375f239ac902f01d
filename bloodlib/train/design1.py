"""Design 1 of the paper, step by step: features -> SVM chosen by CV -> scores -> saved model.

Notebook 02 calls the steps one at a time so a student sees each result (the feature
matrix, the cross-validation table, the scores); :func:`run_experiment` chains them for
scripts. The model is written by :func:`bloodlib.models.saved.save_classifier`, the one place a
classifier and its sidecar are saved.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from bloodlib import CLASS_INDEX, CLASSES
from bloodlib.core.config import DEFAULT_SEED
from bloodlib.data.split import trained_on
from bloodlib.evaluate import metrics
from bloodlib.evaluate.compare import paired_comparison
from bloodlib.evaluate.metrics import bootstrap_ci
from bloodlib.models import backbones, features, svm
from bloodlib.models.saved import save_classifier


@dataclass
class SVMExperiment:
    """What one backbone's design-1 experiment produced."""

    name: str
    backbone: str
    image_size: int
    feature_dim: int
    features_from_cache: bool
    best_params: dict[str, Any]
    cv_accuracy: float
    cv_table: pd.DataFrame
    scores: dict[str, dict[str, Any]]  # split name -> metrics.evaluate() metrics
    model_path: Path
    #: The test cells (content hashes), their true and predicted class indices, for
    #: paired comparisons: two results pair only on the same cells.
    test_labels: np.ndarray | None = None
    test_predictions: np.ndarray | None = None
    test_cells: tuple[str, ...] | None = None

    @property
    def test_metrics(self) -> dict[str, Any]:
        return self.scores["test"]

    @property
    def val_accuracy(self) -> float | None:
        return self.scores.get("val", {}).get("accuracy")

    @property
    def test_accuracy(self) -> float:
        return self.scores["test"]["accuracy"]


def labels(split: pd.DataFrame) -> np.ndarray:
    """Class indices (the models' output order) of a split's rows."""
    return split["label"].map(CLASS_INDEX).to_numpy()


def input_size(backbone: str, image_size: int | None) -> int:
    """The size features are taken at: ``image_size``, or the backbone's native size."""

    return int(image_size or backbones.get(backbone).input_size)


def extract_features(
    backbone: str,
    split: pd.DataFrame,
    *,
    image_size: int | None = None,
    weights: str | None = "imagenet",
    batch_size: int = 32,
    progress: bool = True,
):
    """The frozen backbone's feature vector of every row of ``split`` (cached on disk)."""

    return features.extract(
        split["path"].tolist(),
        split["sha256"].tolist(),
        backbone,
        image_size=input_size(backbone, image_size),
        weights=weights,
        batch_size=batch_size,
        progress=progress,
    )


def fit_and_save(
    backbone: str,
    feature_set: Any,
    split: pd.DataFrame,
    run_dir: str | Path,
    *,
    image_size: int | None = None,
    weights: str | None = "imagenet",
    cv: int = 3,
    seed: int = DEFAULT_SEED,
    grid: list[dict] | None = None,
    n_jobs: int = -1,
    name: str | None = None,
) -> SVMExperiment:
    """Choose the SVM by ``cv``-fold CV on the training rows, score val/test, save the model.

    Saves ``models/<name>.skops`` (default ``<backbone>_svm``; a later training seed's is
    :func:`bloodlib.core.config.seed_model_name`'s) and its sidecar in ``run_dir``; the validation
    and test rows are used only for the final scores. ``seed`` shuffles the CV folds and
    Platt scaling's folds; it is recorded in the sidecar.
    """

    bb = backbones.get(backbone)
    size = input_size(backbone, image_size)
    X = feature_set.features
    y = labels(split)
    part = split["split"].to_numpy()
    start = time.perf_counter()
    result = svm.fit_svm(
        X[part == "train"], y[part == "train"], grid=grid, cv=cv, seed=seed, n_jobs=n_jobs
    )
    train_seconds = time.perf_counter() - start  # the SVM's fit; features are cached apart
    scores, predicted = _score_parts(result.model, X, y, part)
    name = name or f"{backbone}_svm"
    model_path = Path(run_dir) / "models" / f"{name}.skops"
    save_classifier(
        result.model,
        model_path,
        {
            "name": name,
            "method": "svm",
            "backbone": backbone,
            "classes": list(CLASSES),
            "image_size": size,
            "preprocessing": bb.preprocessing,
            "weights": weights,
            "weights_origin": bb.weights_origin if weights == "imagenet" else str(weights),
            "features_key": feature_set.key,
            "svm_params": dict(result.best_params),
            "seed": int(seed),
            "cv_accuracy": result.cv_score,
            "train_images": int((part == "train").sum()),
            "trained_on": trained_on(split[part == "train"], split[part == "val"]),
            "metrics": {
                **{f"{k}_accuracy": v["accuracy"] for k, v in scores.items()},
                "train_seconds": round(train_seconds, 1),
            },
        },
    )
    # The pickle an older bloodlib saved under this name is superseded (its sidecar, shared
    # by name, now describes the .skops file).
    model_path.with_suffix(".joblib").unlink(missing_ok=True)
    return SVMExperiment(
        name=name,
        backbone=backbone,
        image_size=size,
        feature_dim=int(X.shape[1]),
        features_from_cache=bool(feature_set.from_cache),
        best_params=dict(result.best_params),
        cv_accuracy=float(result.cv_score),
        cv_table=result.cv_table,
        scores=scores,
        model_path=model_path,
        test_labels=y[part == "test"] if "test" in predicted else None,
        test_predictions=predicted.get("test"),
        test_cells=tuple(split.loc[part == "test", "sha256"].astype(str)) or None,
    )


def _score_parts(
    model: Any, X: np.ndarray, y: np.ndarray, part: np.ndarray
) -> tuple[dict[str, dict[str, Any]], dict[str, np.ndarray]]:
    """Metrics and predicted class indices of the validation and test rows (those present)."""
    scores: dict[str, dict[str, Any]] = {}
    predicted: dict[str, np.ndarray] = {}
    for part_name in ("val", "test"):
        mask = part == part_name
        if mask.any():
            proba = svm.predict_proba(model, X[mask], len(CLASSES))
            scores[part_name] = metrics.evaluate(y[mask], proba, list(CLASSES), n_boot=0)
            predicted[part_name] = proba.argmax(axis=1)
    return scores, predicted


def run_experiment(
    backbone: str,
    split: pd.DataFrame,
    run_dir: str | Path,
    *,
    image_size: int | None = None,
    weights: str | None = "imagenet",
    batch_size: int = 32,
    cv: int = 3,
    seed: int = DEFAULT_SEED,
    progress: bool = True,
) -> SVMExperiment:
    """Design 1 for one backbone: :func:`extract_features`, then :func:`fit_and_save`."""
    fs = extract_features(
        backbone,
        split,
        image_size=image_size,
        weights=weights,
        batch_size=batch_size,
        progress=progress,
    )
    return fit_and_save(
        backbone, fs, split, run_dir, image_size=image_size, weights=weights, cv=cv, seed=seed
    )


def cv_table(result: SVMExperiment) -> pd.DataFrame:
    """The cross-validation table in readable columns, best first: kernel, C, gamma,
    ``cv_accuracy``, ``cv_std`` and ``chosen`` (the setting the search kept; among ties it
    comes first)."""
    params = pd.DataFrame(list(result.cv_table["params"])).rename(
        columns=lambda c: c.removeprefix("svc__")
    )
    table = pd.concat(
        [
            params,
            result.cv_table[["mean_test_score", "std_test_score"]].rename(
                columns={"mean_test_score": "cv_accuracy", "std_test_score": "cv_std"}
            ),
        ],
        axis=1,
    )
    chosen = {k.removeprefix("svc__"): v for k, v in result.best_params.items()}
    table["chosen"] = [
        all(row.get(k) == v for k, v in chosen.items()) for row in table.to_dict("records")
    ]
    table = table.sort_values(["cv_accuracy", "chosen"], ascending=False, kind="stable")
    return table.reset_index(drop=True)


# ----------------------------------------------------------------------------- comparison

#: Columns of :func:`backbone_table`, in order.
BACKBONE_COLUMNS = (
    "backbone",
    "image_size",
    "feature_dim",
    "params",
    "gmacs",
    "cv_accuracy",
    "val_accuracy",
    "test_accuracy",
    "test_ci_low",
    "test_ci_high",
    "vs_best",
    "vs_best_ci_low",
    "vs_best_ci_high",
    "vs_best_p",
    "images_per_s",
)


def gmacs_at(backbone: str, size: int) -> float | None:
    """The backbone's GMACs for one image at ``size`` px: the registry's native-size count
    scaled by ``(size / native)**2`` (a convolutional network's work grows with the pixel
    count; the pooled head is negligible). ``None`` when the registry has no count."""

    bb = backbones.get(backbone)
    if bb.gmacs is None:
        return None
    return float(bb.gmacs) * (size / bb.input_size) ** 2


def _confusion_pairs(confusion: Any) -> tuple[np.ndarray, np.ndarray]:
    """(y_true, y_pred) rebuilt from a confusion matrix (rows true, columns predicted)."""
    cm = np.asarray(confusion, dtype=np.int64)
    true, pred = np.nonzero(cm)
    counts = cm[true, pred]
    return np.repeat(true, counts), np.repeat(pred, counts)


def ci95_of_test_accuracy(
    result: SVMExperiment, n_boot: int = 1000, seed: int = DEFAULT_SEED
) -> tuple[float, float]:
    """The 95% bootstrap interval of the test accuracy: the one ``evaluate`` stored, or the
    same percentile bootstrap on the test confusion matrix (accuracy only needs which cells
    were right, so the matrix holds all it needs)."""

    stored = result.test_metrics.get("accuracy_ci95")
    if stored is not None:
        return float(stored[0]), float(stored[1])
    y_true, y_pred = _confusion_pairs(result.test_metrics["confusion"])
    return bootstrap_ci(y_true, y_pred, "accuracy", n_boot=n_boot, seed=seed)


def backbone_table(
    results: Mapping[str, SVMExperiment] | Iterable[SVMExperiment],
    *,
    images_per_s: Mapping[str, float] | None = None,
    n_boot: int = 1000,
    seed: int = DEFAULT_SEED,
) -> pd.DataFrame:
    """One row per backbone of design 1: the compute it cost and the accuracy it bought.

    Columns :data:`BACKBONE_COLUMNS`: the size features were taken at, the feature
    dimension, the extractor's parameters, GMACs per image at that size (:func:`gmacs_at`),
    CV / val / test accuracy, the test accuracy's 95% bootstrap interval, and the feature
    extraction speed where ``images_per_s`` (backbone -> images/s) gives it; a backbone
    missing there (e.g. its features came from the cache) gets NaN, not a cache-read speed.
    Sorted by test accuracy, best first (ties: cheaper first). ``vs_best``: each other
    backbone's accuracy minus the best's on the same test cells, with its paired bootstrap
    interval and McNemar's p (:func:`bloodlib.evaluate.compare.paired_comparison`); NaN where
    the answers cell by cell are not known.
    """

    items = list(results.values()) if isinstance(results, Mapping) else list(results)
    speeds = images_per_s or {}
    rows = []
    for r in items:
        low, high = ci95_of_test_accuracy(r, n_boot=n_boot, seed=seed)
        rows.append(
            {
                "backbone": r.backbone,
                "image_size": r.image_size,
                "feature_dim": r.feature_dim,
                "params": backbones.get(r.backbone).params,
                "gmacs": gmacs_at(r.backbone, r.image_size),
                "cv_accuracy": r.cv_accuracy,
                "val_accuracy": r.val_accuracy,
                "test_accuracy": r.test_accuracy,
                "test_ci_low": low,
                "test_ci_high": high,
                "images_per_s": speeds.get(r.backbone, np.nan),
            }
        )
    table = pd.DataFrame(rows, columns=list(BACKBONE_COLUMNS))
    order = table.sort_values(
        ["test_accuracy", "gmacs"], ascending=[False, True], kind="stable", na_position="last"
    ).index
    table, items = table.loc[order].reset_index(drop=True), [items[i] for i in order]
    # Each backbone against the best on the same test cells: a paired test, not two intervals.
    best = items[0] if items else None
    for i, r in enumerate(items[1:], start=1):
        if not _same_test_cells(best, r):
            continue
        c = paired_comparison(
            r.test_labels, best.test_predictions, r.test_predictions, n_boot=n_boot, seed=seed
        )
        table.loc[i, ["vs_best", "vs_best_ci_low", "vs_best_ci_high", "vs_best_p"]] = (
            c.difference,
            c.ci95[0],
            c.ci95[1],
            c.p_mcnemar,
        )
    return table


def _same_test_cells(a: SVMExperiment | None, b: SVMExperiment) -> bool:
    """Both know their answers cell by cell, and on the same cells (not only the same labels)."""
    known = [x for x in (a, b) if x is not None and x.test_predictions is not None]
    return len(known) == 2 and a.test_cells is not None and a.test_cells == b.test_cells


# ----------------------------------------------------------------------------- seeds

#: Columns of :func:`seed_table`, in order.
SEED_COLUMNS = ("seed", "name", "kernel", "C", "cv_accuracy", "test_accuracy", "balanced_accuracy")


def seed_table(runs: Mapping[int, SVMExperiment]) -> pd.DataFrame:
    """One row per training seed (``seed -> experiment`` of one backbone): the setting the
    CV chose, its CV accuracy and the test scores, in seed order. Columns :data:`SEED_COLUMNS`."""
    rows = [
        {
            "seed": int(s),
            "name": r.name,
            "kernel": r.best_params.get("svc__kernel"),
            "C": r.best_params.get("svc__C"),
            "cv_accuracy": r.cv_accuracy,
            "test_accuracy": r.test_accuracy,
            "balanced_accuracy": r.test_metrics["balanced_accuracy"],
        }
        for s, r in sorted(runs.items())
    ]
    return pd.DataFrame(rows, columns=list(SEED_COLUMNS))
