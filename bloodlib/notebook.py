"""Helpers the numbered notebooks share: environment report, run-folder I/O, model evaluation.

Notebooks hand results to each other only through the run folder:
``split.csv`` and ``data.json`` (01), ``models/*`` with sidecars (02, 03),
``metrics.json`` (04).
"""

from __future__ import annotations

import platform
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from bloodlib import CLASSES, __version__
from bloodlib.io import read_json, write_json


def environment(show: bool = True) -> dict[str, Any]:
    """Versions and devices, printed at the top of every notebook."""
    import keras
    import sklearn
    import tensorflow as tf

    gpus = [d.name for d in tf.config.list_physical_devices("GPU")]
    info = {
        "bloodlib": __version__,
        "python": platform.python_version(),
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "scikit-learn": sklearn.__version__,
        "devices": [d.device_type for d in tf.config.list_physical_devices()],
        "gpus": gpus,
    }
    if show:
        print(
            f"bloodlib {info['bloodlib']} | Python {info['python']} | TensorFlow {info['tensorflow']}"
            f" | Keras {info['keras']} | scikit-learn {info['scikit-learn']}"
        )
        print(
            f"Devices: {', '.join(sorted(set(info['devices'])))}"
            f"{' (' + str(len(gpus)) + ' GPU)' if gpus else ' (no GPU: running on CPU)'}"
        )
    return info


def run_path(run_dir: str | Path, *parts: str) -> Path:
    path = Path(run_dir).joinpath(*parts)
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def load_split(run_dir: str | Path) -> pd.DataFrame:
    path = Path(run_dir) / "split.csv"
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} not found: run notebook 01 with the same run_dir first (it writes the split)"
        )
    from bloodlib.split import load_split as _load

    return _load(path)


def label_indices(labels: pd.Series) -> np.ndarray:
    index = {c: i for i, c in enumerate(CLASSES)}
    return labels.map(index).to_numpy()


def saved_models(run_dir: str | Path) -> list[Path]:
    """Model files of a run (``.keras`` / ``.joblib`` with a sidecar), in name order."""
    folder = Path(run_dir) / "models"
    return sorted(
        p
        for p in folder.glob("*")
        if p.suffix in (".keras", ".joblib") and p.with_suffix(".json").is_file()
    )


def evaluate_model(
    model_path: str | Path,
    split: pd.DataFrame,
    *,
    n_boot: int = 1000,
    seed: int = 42,
    progress: bool = False,
) -> dict[str, Any]:
    """Score one saved model on the test split, with temperature scaling fitted on validation.

    Returns the metrics entry for ``metrics.json`` plus, under ``_arrays``, the
    test labels and probabilities for figures (dropped before saving).
    """
    from bloodlib import evaluate as ev
    from bloodlib.saved import load_classifier

    clf = load_classifier(model_path)
    out: dict[str, Any] = {}
    probs = {}
    for part in ("val", "test"):
        rows = split[split["split"] == part]
        if len(rows):
            probs[part] = clf.predict_proba(
                rows["path"].tolist(), hashes=rows["sha256"].tolist(), progress=progress
            )
    test = split[split["split"] == "test"].reset_index(drop=True)
    y_test = label_indices(test["label"])
    p_test = probs["test"]
    metrics = ev.evaluate(y_test, p_test, list(CLASSES), n_boot=n_boot, seed=seed)
    temperature = 1.0
    p_scaled = p_test
    if "val" in probs:
        val = split[split["split"] == "val"]
        temperature = ev.fit_temperature(
            ev.logits_from_proba(probs["val"]), label_indices(val["label"])
        )
        p_scaled = ev.softmax(ev.logits_from_proba(p_test), temperature)
    info = clf.info
    out.update(
        name=info["name"],
        backbone=info["backbone"],
        method=info["method"],
        image_size=info["image_size"],
        test_accuracy=metrics["accuracy"],
        balanced_accuracy=metrics["balanced_accuracy"],
        accuracy_ci95=metrics["accuracy_ci95"],
        macro_f1=metrics["macro_f1"],
        macro_auc=metrics["macro_auc"],
        per_class=metrics["per_class"],
        confusion=metrics["confusion"],
        ece=metrics["ece"],
        temperature=temperature,
        ece_after_scaling=ev.expected_calibration_error(y_test, p_scaled),
        n_test=int(len(test)),
        model_path=str(Path(model_path).relative_to(Path(model_path).parents[1])),
        paper_accuracy=ev.PAPER_RESULTS.get((info["backbone"], info["method"])),
    )
    out["_arrays"] = {
        "y_true": y_test,
        "proba": p_test,
        "proba_scaled": p_scaled,
        "paths": test["path"].tolist(),
    }
    return out


def write_metrics(run_dir: str | Path, entries: list[dict[str, Any]], **extra: Any) -> Path:
    """``metrics.json``: ``{"models": [...], ...}`` without the in-memory arrays."""
    models = [{k: v for k, v in e.items() if not k.startswith("_")} for e in entries]
    return write_json(Path(run_dir) / "metrics.json", {"models": models, **extra})


def read_metrics(run_dir: str | Path) -> dict[str, Any]:
    return read_json(Path(run_dir) / "metrics.json")
