"""Saved classifiers: a model file plus a small JSON sidecar, and one way to load either kind.

``models/<name>.keras`` (fine-tuned network) or ``models/<name>.joblib`` (SVM on
backbone features) sits beside ``models/<name>.json``, which says what the
model expects (classes, input size, preprocessing, backbone, weights origin)
and what it scored.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bloodlib.io import read_json, sha256_file, write_json

#: Kept for callers of the old name: the one content hash lives in ``bloodlib.io``.
file_sha256 = sha256_file


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


@dataclass
class Classifier:
    """A loaded model of either kind, answering class probabilities for image files."""

    path: Path
    info: dict[str, Any]
    _model: Any = field(default=None, repr=False)
    #: The engine of the last prediction: "svm", "keras" or "tflite".
    engine: str | None = None
    _forward: dict = field(default_factory=dict, repr=False)
    _sha256: str | None = field(default=None, repr=False)

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
        engine: str = "auto",
        tta: bool = False,
    ) -> np.ndarray:
        """Class probabilities, one row per path, in order.

        ``engine`` and ``tta`` apply to fine-tuned networks (see ``bloodlib.inference``);
        an SVM always predicts from cached backbone features.
        """
        if self.info["method"] == "svm":
            if tta:
                raise ValueError(
                    f"{self.path.name}: test-time augmentation applies to fine-tuned networks, "
                    "not to an SVM on cached features"
                )
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

            self.engine = "svm"
            return predict_proba(self.model, fs.features, len(self.classes))
        from bloodlib import inference
        from bloodlib.pipeline import make_dataset

        key = (inference.resolve_engine(engine), batch_size)
        if key not in self._forward:
            self._forward[key] = inference.forward_fn(
                load=lambda: self.model,
                model_sha256=self.sha256,
                engine=engine,
                batch_size=batch_size,
            )
        forward, self.engine = self._forward[key]
        if self.engine == "tflite":  # decode and predict in turns: see decoded_chunks
            batches = inference.decoded_chunks(paths, self.image_size, batch_size)
        else:  # TensorFlow shares its own thread pools with tf.data: stream
            batches = make_dataset(
                paths, image_size=self.image_size, batch_size=batch_size
            ).as_numpy_iterator()
        return inference.predict_batches(
            forward, batches, tta=tta, total=len(paths), progress=progress
        )

    @property
    def model(self) -> Any:
        """The SVM pipeline or Keras model, loaded on first use (a cached TFLite copy needs none)."""
        if self._model is None:
            if self.info["method"] == "svm":
                from bloodlib import svm

                self._model = svm.load(self.path)
            else:
                import keras

                import bloodlib.backbones  # noqa: F401  (registers custom layers before loading)

                self._model = keras.models.load_model(self.path, compile=False)
        return self._model

    @property
    def sha256(self) -> str:
        if self._sha256 is None:
            self._sha256 = file_sha256(self.path)
        return self._sha256


def load_classifier(path: str | Path) -> Classifier:
    """A ``.keras`` or ``.joblib`` model with its sidecar; the model itself loads on first use."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"model file not found: {path}")
    return Classifier(path, read_sidecar(path))
