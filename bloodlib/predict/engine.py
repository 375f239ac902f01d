"""The prediction engine: a checked saved model that answers class probabilities for files.

:func:`load_classifier` opens a model as :func:`bloodlib.models.saved.open_model` does (its
sidecar, real format and binding checked; nothing of the file runs) and returns a
:class:`Classifier`: a fine-tuned network predicts through TFLite (XNNPACK) or Keras
(:mod:`bloodlib.predict.inference`), streaming decoded batches; an SVM predicts from its
backbone's cached features. One image's path: file -> decode and resize
(``data.pipeline``) -> optional colour/scale transform -> network -> probabilities.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from bloodlib.core.hashing import sha256_file
from bloodlib.data.pipeline import make_dataset
from bloodlib.models import features
from bloodlib.models.saved import SavedModel, SidecarError, open_model
from bloodlib.models.svm import predict_proba as svm_predict_proba
from bloodlib.predict import inference


@dataclass
class Classifier(SavedModel):
    """A loaded model of either kind, answering class probabilities for image files."""

    #: The engine of the last prediction: "svm", "keras" or "tflite".
    engine: str | None = None
    _forward: dict = field(default_factory=dict, repr=False)

    def prepare(self, engine: str = "auto", batch_size: int = 32) -> None:
        """Load what predicting needs and check it answers the sidecar's classes: fail before work."""
        if self.info["method"] == "svm":
            self.model  # noqa: B018 (loads and checks the pipeline)
        else:
            self._forward_for(engine, batch_size)

    def _forward_for(self, engine: str, batch_size: int):
        key = (inference.resolve_engine(engine), batch_size)
        if key not in self._forward:
            forward, used = inference.forward_fn(
                load=lambda: self.model,
                model_sha256=self.sha256,
                engine=engine,
                batch_size=batch_size,
            )
            # A cached TFLite copy is keyed by the model's hash, but the sidecar may have been
            # swapped since: check what it answers too.
            shape = getattr(forward, "output_shape", None)
            if shape is not None and tuple(shape) != (len(self.classes),):
                raise SidecarError(
                    f"{self.path}: the network answers {shape[-1] if shape else 0} classes, but "
                    f"the sidecar lists {len(self.classes)}; the sidecar does not describe this model"
                )
            self._forward[key] = forward, used
        return self._forward[key]

    def predict_proba(
        self,
        paths: list[str],
        *,
        hashes: list[str] | None = None,
        batch_size: int = 32,
        progress: bool = True,
        engine: str = "auto",
        tta: bool = False,
        transform: Callable[[np.ndarray], np.ndarray] | None = None,
    ) -> np.ndarray:
        """Class probabilities, one row per path, in order.

        ``engine``, ``tta`` and ``transform`` (a function of each decoded batch, float32
        0..255 at the model's size, applied before the model: ``bloodlib.data.look``) apply
        to fine-tuned networks (see ``bloodlib.predict.inference``); an SVM always predicts
        from cached backbone features.
        """
        return self.predict_proba_views(
            paths,
            [transform],
            hashes=hashes,
            batch_size=batch_size,
            progress=progress,
            engine=engine,
            tta=tta,
        )[0]

    def predict_proba_views(
        self,
        paths: list[str],
        transforms: Sequence[Callable[[np.ndarray], np.ndarray] | None],
        *,
        hashes: list[str] | None = None,
        batch_size: int = 32,
        progress: bool = True,
        engine: str = "auto",
        tta: bool = False,
    ) -> list[np.ndarray]:
        """:meth:`predict_proba` after each of ``transforms`` (None: as decoded), one array
        per transform; every file is read and decoded once for all of them."""
        if self.info["method"] == "svm":
            if tta or any(t is not None for t in transforms):
                raise ValueError(
                    f"{self.path.name}: test-time augmentation and colour/scale normalisation "
                    "apply to fine-tuned networks, not to an SVM on cached features"
                )
            proba = self._svm_proba(paths, hashes, batch_size, progress)
            return [proba for _ in transforms]
        forward, self.engine = self._forward_for(engine, batch_size)
        if self.engine == "tflite":  # decode and predict in turns: see decoded_chunks
            batches = inference.decoded_chunks(paths, self.image_size, batch_size)
        else:  # TensorFlow shares its own thread pools with tf.data: stream
            batches = make_dataset(
                paths, image_size=self.image_size, batch_size=batch_size
            ).as_numpy_iterator()
        return inference.predict_views(
            forward, batches, transforms, tta=tta, total=len(paths), progress=progress
        )

    def _svm_proba(
        self, paths: list[str], hashes: list[str] | None, batch_size: int, progress: bool
    ) -> np.ndarray:
        model = self.model  # load and check before extracting any feature
        fs = features.extract(
            paths,
            hashes or [sha256_file(p) for p in paths],
            self.info["backbone"],
            image_size=self.image_size,
            weights=self.info.get("weights", "imagenet"),
            batch_size=batch_size,
            progress=progress,
        )
        self.engine = "svm"
        return svm_predict_proba(model, fs.features, len(self.classes))


def load_classifier(path: str | Path, *, trust_pickle: bool = False) -> Classifier:
    """A ``.keras`` or ``.skops`` model with its sidecar, ready to predict (see
    :func:`bloodlib.models.saved.open_model` for what is checked before any work)."""
    return open_model(path, trust_pickle=trust_pickle, kind=Classifier)
