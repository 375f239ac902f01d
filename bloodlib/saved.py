"""Saved classifiers: a model file plus a small JSON sidecar, and one way to load either kind.

``models/<name>.keras`` (fine-tuned network) or ``models/<name>.joblib`` (SVM on
backbone features) sits beside ``models/<name>.json``, which says what the
model expects (classes, input size, preprocessing, backbone, weights origin)
and what it scored.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bloodlib.io import read_json, write_json


def sidecar_path(model_path: str | Path) -> Path:
    return Path(model_path).with_suffix(".json")


def write_sidecar(model_path: str | Path, info: dict[str, Any]) -> Path:
    return write_json(sidecar_path(model_path), info)


def read_sidecar(model_path: str | Path) -> dict[str, Any]:
    path = sidecar_path(model_path)
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} not found: a bloodlib model needs its JSON sidecar beside the model file"
        )
    return read_json(path)


def file_sha256(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


@dataclass
class Classifier:
    """A loaded model of either kind, answering class probabilities for image files."""

    path: Path
    info: dict[str, Any]
    model: Any

    @property
    def classes(self) -> list[str]:
        return list(self.info["classes"])

    @property
    def image_size(self) -> int:
        return int(self.info["image_size"])

    def predict_proba(
        self,
        paths: list[str],
        *,
        hashes: list[str] | None = None,
        batch_size: int = 32,
        progress: bool = True,
    ) -> np.ndarray:
        if self.info["method"] == "svm":
            from bloodlib import features

            hashes = hashes or [file_sha256(p) for p in paths]
            fs = features.extract(
                paths,
                hashes,
                self.info["backbone"],
                image_size=self.image_size,
                weights=self.info.get("weights", "imagenet"),
                batch_size=batch_size,
                progress=progress,
            )
            from bloodlib.svm import predict_proba

            return predict_proba(self.model, fs.features, len(self.classes))
        from bloodlib.pipeline import make_dataset

        ds = make_dataset(paths, image_size=self.image_size, batch_size=batch_size)
        return np.asarray(self.model.predict(ds, verbose=1 if progress else 0), dtype=np.float64)


def load_classifier(path: str | Path) -> Classifier:
    """Load ``.keras`` or ``.joblib`` with its sidecar."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"model file not found: {path}")
    info = read_sidecar(path)
    if info["method"] == "svm":
        from bloodlib import svm

        model = svm.load(path)
    else:
        import keras

        import bloodlib.backbones  # noqa: F401  (registers custom layers before loading)

        model = keras.models.load_model(path, compile=False)
    return Classifier(path, info, model)
