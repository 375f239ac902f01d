"""Prediction for saved Keras classifiers: a fast CPU engine and test-time augmentation.

Keras' ``model.predict`` runs EfficientNet-Lite0 at ~25 images/s on two CPU cores:
TensorFlow's depthwise convolutions and per-batch overheads dominate. The same
network converted once to TensorFlow Lite runs on XNNPACK at ~130 images/s with
float32 outputs equal to ~1e-6, so on a CPU-only machine bloodlib predicts with a
converted copy cached under ``cache_dir()/tflite`` (keyed by the model file's
content), and falls back to Keras, with a warning, where conversion fails.

Test-time augmentation (``tta=True``) averages the class probabilities over the
eight flips and 90-degree rotations of each image: a cell has no orientation, and
those transforms are exact (no interpolation).
"""

from __future__ import annotations

import contextlib
import io
import os
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow as tf

from bloodlib.core import quiet
from bloodlib.core.config import cache_dir
from bloodlib.core.errors import BloodlibError
from bloodlib.core.io import atomic_path
from bloodlib.core.progress import tqdm
from bloodlib.data.pipeline import make_dataset

ENGINES = ("auto", "keras", "tflite")

#: Number of transforms that ``tta=True`` averages over (the dihedral group of the square).
TTA_VIEWS = 8


def cpu_threads() -> int:
    """Cores this process may use (respects affinity masks and container CPU sets)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # macOS, Windows
        return max(1, os.cpu_count() or 1)


def dihedral_views(x: np.ndarray) -> list[np.ndarray]:
    """The 8 flips and quarter-turns of a batch ``(n, h, w, c)`` of square images."""
    views = []
    for k in range(4):
        r = np.rot90(x, k, axes=(1, 2))
        views += [r, r[:, :, ::-1]]
    return [np.ascontiguousarray(v) for v in views]


def gpu_visible() -> bool:

    return bool(tf.config.list_physical_devices("GPU"))


def resolve_engine(engine: str = "auto") -> str:
    """``auto``: TFLite on a CPU-only machine, Keras where a GPU is visible."""
    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {ENGINES}, not {engine!r}")
    if engine != "auto":
        return engine
    return "keras" if gpu_visible() else "tflite"


def tflite_cache_path(model_sha256: str) -> Path:

    # The converter's output can change between TensorFlow versions: part of the key.
    return cache_dir() / "tflite" / f"{model_sha256[:32]}-tf{tf.__version__}.tflite"


def convert_to_tflite(model: Any, out_path: str | Path) -> Path:
    """Write a float32 TFLite copy of a Keras model, atomically; quiet on stdout."""

    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    # The converter exports a SavedModel first, prints its signature and logs where it wrote
    # it: none of it is the user's business.
    logger = tf.get_logger()
    level = logger.level
    logger.setLevel("ERROR")
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            flat = converter.convert()
    finally:
        logger.setLevel(level)
    with atomic_path(out_path, suffix=".tflite") as tmp:
        Path(tmp).write_bytes(flat)
    return out_path


def _interpreter_class():
    try:  # the maintained home of the interpreter, where installed
        from ai_edge_litert.interpreter import Interpreter  # optional: the standalone LiteRT

        return Interpreter
    except ImportError:
        return tf.lite.Interpreter


class TFLiteModel:
    """A TFLite model called like a Keras model on float32 batches of one fixed size.

    The interpreter is sized for ``batch_size`` once; a shorter last batch is padded,
    so tensors are never re-allocated.
    """

    def __init__(self, path: str | Path, batch_size: int = 32, threads: int | None = None):
        self.path = Path(path)
        self.batch_size = int(batch_size)
        # tf.lite.Interpreter warns that ai_edge_litert replaces it, and TFLite's C++ logger
        # announces its XNNPACK delegate on stderr when it allocates tensors: neither belongs
        # in a notebook's output.
        with warnings.catch_warnings(), quiet.filtered_stderr():
            warnings.filterwarnings("ignore", message=".*tf.lite.Interpreter is deprecated")
            self._it = _interpreter_class()(
                model_path=str(self.path), num_threads=threads or cpu_threads()
            )
            inp = self._it.get_input_details()[0]
            self._in, self._out = inp["index"], self._it.get_output_details()[0]["index"]
            self.input_shape = tuple(int(s) for s in inp["shape"][1:])
            #: Per image, e.g. ``(8,)``: what a caller checks against the classes it expects.
            self.output_shape = tuple(int(s) for s in self._it.get_output_details()[0]["shape"][1:])
            self._it.resize_tensor_input(self._in, [self.batch_size, *self.input_shape])
            self._it.allocate_tensors()

    def __call__(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, dtype=np.float32)
        out = []
        for start in range(0, len(x), self.batch_size):
            chunk = x[start : start + self.batch_size]
            n = len(chunk)
            if n < self.batch_size:
                pad = np.zeros((self.batch_size - n, *chunk.shape[1:]), np.float32)
                chunk = np.concatenate([chunk, pad])
            self._it.set_tensor(self._in, chunk)
            self._it.invoke()
            out.append(self._it.get_tensor(self._out)[:n].copy())
        return np.concatenate(out) if out else np.zeros((0, 0), np.float32)


def keras_forward(model: Any) -> Callable[[np.ndarray], np.ndarray]:
    """``model(x, training=False)`` in a ``tf.function``: no ``predict`` overhead per call."""

    fn = tf.function(lambda x: model(x, training=False), reduce_retracing=True)
    return lambda x: np.asarray(fn(tf.convert_to_tensor(x, tf.float32)))


def forward_fn(
    model: Any = None,
    *,
    load: Callable[[], Any] | None = None,
    model_sha256: str | None = None,
    engine: str = "auto",
    batch_size: int = 32,
) -> tuple[Callable[[np.ndarray], np.ndarray], str]:
    """A batch -> probabilities function for a Keras model, and the engine it uses.

    Give the ``model``, or ``load`` to load it only when needed: a cached TFLite copy
    needs no Keras model (loading one costs seconds). ``tflite`` converts the model
    once per model file (cached by ``model_sha256``). Under ``auto`` a failed
    conversion warns and falls back to Keras; asking for ``tflite`` makes it an error.
    """
    if (model is None) == (load is None):
        raise ValueError("give either model or load")
    get_model = load if load is not None else lambda: model
    chosen = resolve_engine(engine)
    if chosen == "tflite":
        try:
            if model_sha256:
                path = tflite_cache_path(model_sha256)
                if not path.is_file():
                    convert_to_tflite(get_model(), path)
            else:
                path = cache_dir() / "tflite" / f"unnamed-{os.getpid()}-{id(model)}.tflite"
                convert_to_tflite(get_model(), path)
            return TFLiteModel(path, batch_size=batch_size), "tflite"
        except BloodlibError:  # the model itself is refused (unsafe, or not what its sidecar says)
            raise
        except Exception as exc:  # noqa: BLE001 (any converter failure has the same remedy)
            if engine == "tflite":
                raise RuntimeError(
                    f"TFLite conversion failed ({type(exc).__name__}: {exc}); "
                    "use engine='keras' (CLI: --engine keras)"
                ) from exc
            warnings.warn(
                f"TFLite conversion failed ({type(exc).__name__}: {exc}); predicting with Keras, "
                "which is slower on CPU",
                stacklevel=2,
            )
    return keras_forward(get_model()), "keras"


def decoded_chunks(
    paths: list[str], image_size: int, batch_size: int = 32, chunk_batches: int = 8
) -> Iterator[np.ndarray]:
    """Decode ``chunk_batches`` batches of images at a time and hand each chunk over whole.

    XNNPACK splits every operation statically across its threads, so a decoder thread
    running beside it (tf.data's prefetch) pre-empts one of them and the whole network
    waits: measured on 2 cores, 50 images/s streamed against ~95 alternating. Decoding
    a chunk (on every core), then predicting it (on every core), keeps each core on one
    job at a time; memory stays bounded by the chunk (256 images at 224 px: 150 MB).
    Tried since, on a quiet 2-core Xeon (512 dev images, Lite0; pure forward 211-222
    images/s; this, 157-162): a decoding thread one chunk ahead (150-158), the same at
    nice 19 (141), files decoded one by one with equal shapes resized in batches (153-159;
    tf.data's parallel decode costs less CPU, 1.2 s against 1.5 s for 512). The cores are
    full either way: decode (~2.4 ms of CPU per 360 px JPEG, mostly the antialiased
    resize) and the forward (~9 ms) add up, whatever the order.
    """

    n = batch_size * chunk_batches
    for start in range(0, len(paths), n):
        part = list(paths[start : start + n])
        yield next(
            make_dataset(part, image_size=image_size, batch_size=len(part)).as_numpy_iterator()
        )


def predict_batches(
    forward: Callable[[np.ndarray], np.ndarray],
    batches: Iterable[np.ndarray],
    *,
    tta: bool = False,
    total: int | None = None,
    progress: bool = True,
    desc: str = "predict",
) -> np.ndarray:
    """Class probabilities for every image of ``batches`` (arrays ``(n, h, w, 3)``), in order."""
    return predict_views(
        forward, batches, [None], tta=tta, total=total, progress=progress, desc=desc
    )[0]


def predict_views(
    forward: Callable[[np.ndarray], np.ndarray],
    batches: Iterable[np.ndarray],
    transforms: Sequence[Callable[[np.ndarray], np.ndarray] | None],
    *,
    tta: bool = False,
    total: int | None = None,
    progress: bool = True,
    desc: str = "predict",
) -> list[np.ndarray]:
    """Class probabilities after each of ``transforms`` (None: the images as decoded), one
    array per transform, from one pass over ``batches``: each image is decoded once, however
    many views of it are predicted (``classify --normalize reinhard+macenko``)."""

    if not transforms:
        raise ValueError("predict_views needs at least one transform (None: the images as decoded)")
    out: list[list[np.ndarray]] = [[] for _ in transforms]
    with tqdm(total=total, desc=desc, unit="img", disable=not progress) as bar:
        for batch in batches:
            batch = np.asarray(batch, dtype=np.float32)
            for view, transform in zip(out, transforms, strict=True):
                x = batch if transform is None else np.asarray(transform(batch), np.float32)
                if tta:
                    p = np.mean([forward(v) for v in dihedral_views(x)], axis=0)
                else:
                    p = forward(x)
                view.append(np.asarray(p, dtype=np.float64))
            bar.update(len(batch))
    return [np.concatenate(view) if view else np.zeros((0, 0)) for view in out]
