"""Design 1 of the paper, step by step: features -> SVM chosen by CV -> scores -> saved model.

Notebook 02 calls the steps one at a time so a student sees each result (the feature
matrix, the cross-validation table, the scores); :func:`run_experiment` chains them for
scripts. The model is written by :func:`bloodlib.saved.save_classifier`, the one place a
classifier and its sidecar are saved.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from bloodlib import CLASS_INDEX, CLASSES
from bloodlib.config import DEFAULT_SEED


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
    scores: dict[str, dict[str, Any]]  # split name -> evaluate.evaluate() metrics
    model_path: Path

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
    from bloodlib import backbones

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
    from bloodlib import features

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
) -> SVMExperiment:
    """Choose the SVM by ``cv``-fold CV on the training rows, score val/test, save the model.

    Saves ``models/<backbone>_svm.skops`` and its sidecar in ``run_dir``; the validation
    and test rows are used only for the final scores.
    """
    from bloodlib import backbones, evaluate, svm
    from bloodlib.saved import save_classifier

    bb = backbones.get(backbone)
    size = input_size(backbone, image_size)
    X = feature_set.features
    y = labels(split)
    part = split["split"].to_numpy()
    result = svm.fit_svm(
        X[part == "train"], y[part == "train"], grid=grid, cv=cv, seed=seed, n_jobs=n_jobs
    )
    scores: dict[str, dict[str, Any]] = {}
    for name in ("val", "test"):
        mask = part == name
        if mask.any():
            proba = svm.predict_proba(result.model, X[mask], len(CLASSES))
            scores[name] = evaluate.evaluate(y[mask], proba, list(CLASSES), n_boot=0)
    name = f"{backbone}_svm"
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
            "cv_accuracy": result.cv_score,
            "train_images": int((part == "train").sum()),
            "metrics": {f"{k}_accuracy": v["accuracy"] for k, v in scores.items()},
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
    )


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
