"""Export a fine-tuned classifier for use outside Python: TFLite, ONNX or a TF SavedModel.

An export is one model file (a folder for a SavedModel) plus a copy of the source model's
sidecar beside it, named ``<out>.json`` (``lite0.onnx`` -> ``lite0.onnx.json``), so it never
collides with the source's own sidecar. The copy records the exported file's own SHA-256
(``model_sha256``, re-bound with ``binding_sha256``), the source ``.keras`` file's
(``source_model_sha256``), the converter, and how closely the export's outputs matched
Keras on a few cells. Every format takes what the ``.keras`` model takes: float32 RGB
pixels in 0..255 at the sidecar's ``image_size``, shape ``(n, size, size, 3)``, with the
backbone's preprocessing inside the model; it answers softmax probabilities in the order
of the sidecar's ``classes``.

The export is staged in a hidden folder beside ``out``, checked there, and only then moved
into place, so a failed conversion or check leaves nothing behind.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from bloodlib import CLASSES, IMAGE_SUFFIXES
from bloodlib.core.config import DEFAULT_SEED, SAMPLE_DIR
from bloodlib.core.errors import BloodlibError, OutputPathError
from bloodlib.core.hashing import sha256_file, sha256_rows
from bloodlib.core.io import read_json, write_json
from bloodlib.core.paths import check_output
from bloodlib.data.pipeline import make_dataset
from bloodlib.models import pretrained
from bloodlib.models.saved import binding_sha256, require_bound, sidecar_path
from bloodlib.predict.engine import Classifier, load_classifier
from bloodlib.predict.inference import TFLiteModel, convert_to_tflite

#: Export formats and the suffix their ``--out`` must carry ("" for a SavedModel folder).
FORMATS: dict[str, str] = {"tflite": ".tflite", "onnx": ".onnx", "savedmodel": ""}

#: Cells the export is checked on: one per class of bloodlib's eight.
CHECK_CELLS = 8

#: Largest difference in any probability between the export and Keras that still passes.
#: A faithful float32 conversion differs by rounding alone (~1e-6 measured on Lite0);
#: a dropped preprocessing step or a wrong layer moves probabilities by 1e-2 and more.
TOLERANCE = 1e-4

#: ONNX opset the export targets: supported by tf2onnx 1.17 and by any ONNX Runtime >= 1.14.
ONNX_OPSET = 17

#: Name of the export's input tensor (ONNX input, SavedModel signature argument).
INPUT_NAME = "image"

#: Compute dtypes of Keras' mixed-precision policies, which TFLite and ONNX do not take.
LOW_PRECISION = ("bfloat16", "float16")

#: What to install for ONNX export, named in the error when it is missing.
ONNX_INSTALL = "pip install 'tf2onnx==1.17.0' 'onnx==1.23.1' 'onnxruntime==1.30.0'"


class ExportError(BloodlibError):
    """A model that cannot be exported, or an export that does not match its model."""


@dataclass
class ExportResult:
    """Where an export went and how closely it matched Keras."""

    out: Path
    sidecar: Path
    format: str
    max_abs_diff: float
    cells: int
    cells_from: str  # "sample" (real cells of data/sample) or "random"
    source_precision: str = "float32"
    #: Max |difference| between the float32 Keras model and the source's mixed precision.
    recast_diff: float = 0.0

    def report(self) -> str:
        what = "cells of the embedded sample" if self.cells_from == "sample" else "random images"
        lines = [
            f"exported {self.format}: {self.out}",
            f"sidecar: {self.sidecar}",
            f"outputs match Keras on {self.cells} {what}: max |difference| "
            f"{self.max_abs_diff:.2e} (tolerance {TOLERANCE:.0e})",
        ]
        if self.source_precision != "float32":
            lines.append(
                f"the model was trained in {self.source_precision}; the export computes in "
                f"float32 with the same weights (max |difference| to {self.source_precision} "
                f"Keras: {self.recast_diff:.2e})"
            )
        return "\n".join(lines)


def export_sidecar_path(out: str | Path) -> Path:
    """The sidecar of an export: ``<out>.json`` beside the file or folder."""
    out = Path(out)
    return out.with_name(out.name + ".json")


def tree_sha256(path: str | Path) -> str:
    """A file's SHA-256, or for a folder the SHA-256 of its sorted ``relpath<TAB>sha256`` lines."""
    path = Path(path)
    if path.is_file():
        return sha256_file(path)
    files = sorted(p for p in path.rglob("*") if p.is_file())
    return sha256_rows((f.relative_to(path).as_posix(), sha256_file(f)) for f in files)


# --- output checks (before any work) -----------------------------------------------------


def _is_our_export(out: Path, fmt: str, source_sha: str) -> bool:
    """``out`` is an earlier export of this very model in this format (safe to replace)."""
    try:
        info = read_json(export_sidecar_path(out))
    except (OSError, ValueError):
        return False
    return (
        isinstance(info, dict)
        and info.get("format") == fmt
        and info.get("source_model_sha256") == source_sha
        and info.get("model_sha256") == tree_sha256(out)
    )


def check_out(model_path: Path, out: Path, fmt: str, source_sha: str, force: bool) -> None:
    """Refuse an ``--out`` that would overwrite the model, its sidecar or unrelated files.

    The shared rules (``core.paths.check_output``), then an export's own: a file or a
    SavedModel folder in the way is replaced only when it is this model's export in this
    format, or with ``force``, and never a folder of other files.
    """
    check_output(
        out,
        writes=[export_sidecar_path(out)],
        inputs=[model_path, sidecar_path(model_path)],
        role="model being exported",
        what=f"a {fmt} export",
    )
    suffix = FORMATS[fmt]
    if suffix and out.suffix.lower() != suffix:
        raise OutputPathError(
            f"--out {out}: a {fmt} export is a {suffix} file; end the name in {suffix}"
        )
    if not suffix and out.suffix.lower() in {".keras", ".tflite", ".onnx", ".json", ".h5"}:
        raise OutputPathError(
            f"--out {out}: a SavedModel is a folder; give a folder name without {out.suffix}"
        )
    if out.is_symlink():
        raise OutputPathError(f"--out {out} is a symbolic link; give a plain path")
    if out.exists():
        if suffix and not out.is_file():
            raise OutputPathError(f"--out {out} exists and is not a file; choose another name")
        if not suffix and not out.is_dir():
            raise OutputPathError(f"--out {out} exists and is a file, not a SavedModel folder")
        if not suffix and any(out.iterdir()) and not (out / "saved_model.pb").is_file():
            # --force replaces SavedModel folders only: never a folder of other files.
            raise OutputPathError(
                f"--out {out} is a folder that is not a SavedModel; refusing to replace it "
                "(choose a new folder name)"
            )
        if not force and not _is_our_export(out, fmt, source_sha):
            raise OutputPathError(
                f"--out {out} already exists and is not this model's {fmt} export; "
                "add --force to replace it, or choose another name"
            )
    side_out = export_sidecar_path(out)
    if side_out.is_symlink() or (side_out.exists() and not side_out.is_file()):
        raise OutputPathError(
            f"{side_out} (the export's sidecar) is not a plain file; move it away"
        )
    if side_out.exists() and not out.exists() and not force:
        raise OutputPathError(
            f"{side_out} (the export's sidecar) already exists without its export; "
            "add --force to replace it, or choose another name"
        )
    parent = out.parent if str(out.parent) else Path(".")
    parent.mkdir(parents=True, exist_ok=True)
    if not os.access(parent, os.W_OK):
        raise OutputPathError(f"cannot write --out {out}: its folder is not writable")


# --- cells to compare on ----------------------------------------------------------------


def check_images(
    classes: list[str], image_size: int, n: int = CHECK_CELLS
) -> tuple[np.ndarray, str]:
    """``n`` images ``(n, s, s, 3)`` float32 0..255 and where they came from.

    Real cells of the embedded sample (one per class in turn, decoded and resized as
    ``classify`` does) when the model's classes are bloodlib's; seeded random pixels for
    any other model or when the sample is missing.
    """
    paths: list[str] = []
    if list(classes) == list(CLASSES) and SAMPLE_DIR.is_dir():
        per_class = []
        for c in CLASSES:
            folder = SAMPLE_DIR / c
            files = sorted(folder.iterdir()) if folder.is_dir() else []
            per_class.append(
                [
                    str(p)
                    for p in files
                    if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")
                ]
            )
        for i in range(n):
            for files in per_class:
                if i < len(files) and len(paths) < n:
                    paths.append(files[i])
    if len(paths) == n:
        ds = make_dataset(paths, image_size=image_size, batch_size=n)
        try:
            return np.asarray(next(ds.as_numpy_iterator()), np.float32), "sample"
        except (ValueError, tf.errors.OpError):  # a damaged checkout: random pixels still check
            pass
    rng = np.random.default_rng(DEFAULT_SEED)
    return rng.uniform(0, 255, (n, image_size, image_size, 3)).astype(np.float32), "random"


# --- float32 --------------------------------------------------------------------------


def _float32_config(obj: Any) -> tuple[Any, int]:
    """A Keras config with every mixed-precision policy (and tensor dtype) made float32."""
    if isinstance(obj, list):
        pairs = [_float32_config(v) for v in obj]
        return [v for v, _ in pairs], sum(n for _, n in pairs)
    if not isinstance(obj, dict):
        return obj, 0
    if obj.get("class_name") == "DTypePolicy" and str(obj["config"].get("name", "")).startswith(
        "mixed_"
    ):
        return {**obj, "config": {**obj["config"], "name": "float32"}}, 1
    out, n = {}, 0
    for k, v in obj.items():
        if k == "dtype" and v in LOW_PRECISION:
            out[k], n = "float32", n + 1
        else:
            out[k], m = _float32_config(v)
            n += m
    return out, n


def float32_copy(model: Any) -> tuple[Any, bool]:
    """The model itself if it computes in float32, else a float32 copy with the same weights.

    A model trained under ``mixed_bfloat16`` (bloodlib's choice on CPUs with AMX) or
    ``mixed_float16`` (GPUs) keeps its policy in the saved file; its variables are float32
    already, so the copy runs the same weights in float32, which every runtime accepts.
    """

    config, changed = _float32_config(keras.saving.serialize_keras_object(model))
    if not changed:
        return model, False
    copy = keras.saving.deserialize_keras_object(config, safe_mode=True)
    copy.set_weights(model.get_weights())
    return copy, True


# --- converters: each writes into a staging path and returns a forward function -----------


def _quiet() -> contextlib.ExitStack:
    """Silence converters' stdout chatter and TensorFlow's info logs."""

    stack = contextlib.ExitStack()
    stack.enter_context(contextlib.redirect_stdout(io.StringIO()))
    logger = tf.get_logger()
    level = logger.level
    logger.setLevel("ERROR")
    stack.callback(logger.setLevel, level)
    return stack


def _input_spec(image_size: int):

    return tf.TensorSpec((None, image_size, image_size, 3), tf.float32, name=INPUT_NAME)


def _to_tflite(model: Any, path: Path, image_size: int) -> tuple[Callable, dict]:

    convert_to_tflite(model, path)
    engine = TFLiteModel(path, batch_size=CHECK_CELLS)
    return engine, {"converter": f"tensorflow {tf.__version__} TFLiteConverter", "float": "float32"}


def _to_onnx(model: Any, path: Path, image_size: int) -> tuple[Callable, dict]:
    try:
        # lazy: ONNX is an optional extra (pip install bloodlib[export])
        import onnxruntime as ort
        import tf2onnx
    except ImportError as exc:
        raise ExportError(
            f"ONNX export needs tf2onnx and onnxruntime ({exc.name} is not installed): "
            f"{ONNX_INSTALL}, or pip install -e '.[export]' in a checkout"
        ) from exc
    tf2onnx_logger = logging.getLogger("tf2onnx")
    level = tf2onnx_logger.level
    tf2onnx_logger.setLevel(logging.ERROR)
    try:
        with _quiet():
            proto, _ = tf2onnx.convert.from_keras(
                model, input_signature=[_input_spec(image_size)], opset=ONNX_OPSET
            )
    finally:
        tf2onnx_logger.setLevel(level)
    path.write_bytes(proto.SerializeToString())
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    in_name, out_name = session.get_inputs()[0].name, session.get_outputs()[0].name
    return (
        lambda x: session.run([out_name], {in_name: x})[0],
        {
            "converter": f"tf2onnx {tf2onnx.__version__}",
            "opset": ONNX_OPSET,
            "input_name": in_name,
            "output_name": out_name,
        },
    )


def _to_savedmodel(model: Any, path: Path, image_size: int) -> tuple[Callable, dict]:

    with _quiet():
        model.export(str(path), format="tf_saved_model", input_signature=[_input_spec(image_size)])
        loaded = tf.saved_model.load(str(path))
    return (
        lambda x: loaded.serve(tf.constant(x)).numpy(),
        {
            "converter": f"keras {keras.__version__} Model.export",
            "endpoint": "serve",
            "signature": "serving_default",
            "input_name": INPUT_NAME,
        },
    )


CONVERTERS: dict[str, Callable[[Any, Path, int], tuple[Callable, dict]]] = {
    "tflite": _to_tflite,
    "onnx": _to_onnx,
    "savedmodel": _to_savedmodel,
}


# --- the export -------------------------------------------------------------------------


def _policy_name(model: Any) -> str:
    """The mixed-precision policy a model's layers compute under (the first one not float32)."""
    names = [layer.dtype_policy.name for layer in model._flatten_layers(include_self=False)]
    return next((n for n in names if n != "float32"), "float32")


def _publish(staged: Path, out: Path) -> None:
    """Move a staged file or folder onto ``out``; an old folder is moved aside first, then removed."""
    if staged.is_dir() and out.is_dir():
        aside = out.with_name(f".{out.name}.old-{os.getpid()}")
        os.replace(out, aside)
        try:
            os.replace(staged, out)
        except BaseException:
            os.replace(aside, out)
            raise
        shutil.rmtree(aside, ignore_errors=True)
    else:
        os.replace(staged, out)


def export_model(
    model_path: str | Path, fmt: str, out: str | Path, *, force: bool = False
) -> ExportResult:
    """Export a saved ``.keras`` classifier to ``fmt`` at ``out``, with its sidecar copy.

    Checked before any work: the model loads safely and its sidecar belongs to it (as
    ``classify`` checks), and ``out`` overwrites neither the model nor an unrelated file
    (``force`` allows replacing an existing different export). The export's outputs must
    match Keras within :data:`TOLERANCE` on :data:`CHECK_CELLS` cells, or nothing is written.
    """
    if fmt not in FORMATS:
        raise ExportError(f"unknown export format {fmt!r}; use one of {', '.join(FORMATS)}")
    model_path, out = pretrained.resolve(model_path), Path(out)
    clf = _source(model_path)
    check_out(model_path, out, fmt, clf.sha256, force)
    x, cells_from = check_images(clf.classes, clf.image_size)
    model, recast = float32_copy(clf.model)
    expected = np.asarray(model(tf.constant(x), training=False), np.float64)
    # What running in float32 instead of the training precision changes, for the record.
    recast_diff = (
        float(np.max(np.abs(expected - np.asarray(clf.model(tf.constant(x), training=False)))))
        if recast
        else 0.0
    )
    details, diff, sha = _convert_checked(model, fmt, out, clf.image_size, x, expected, cells_from)
    source_precision = _policy_name(clf.model) if recast else "float32"
    info = {k: v for k, v in clf.info.items() if k not in ("model_sha256", "binding_sha256")}
    info.update(
        format=fmt,
        input="RGB float32 0..255, shape (n, image_size, image_size, 3); "
        "preprocessing is inside the model; outputs are probabilities in 'classes' order",
        source_model=model_path.name,
        source_model_sha256=clf.sha256,
        export=details,
        precision="float32",
        source_precision=source_precision,
        export_check={
            "cells": len(x),
            "images": cells_from,
            "max_abs_diff": diff,
            "tolerance": TOLERANCE,
            "max_abs_diff_to_source_precision": recast_diff,
        },
        model_sha256=sha,
    )
    info["binding_sha256"] = binding_sha256(info, sha)
    side = export_sidecar_path(out)
    write_json(side, info)
    return ExportResult(out, side, fmt, diff, len(x), cells_from, source_precision, recast_diff)


def _source(model_path: Path) -> Classifier:
    """The model to export: a fine-tuned network whose sidecar is bound to it."""
    clf = load_classifier(model_path)
    if clf.info["method"] != "finetune":
        raise ExportError(
            f"{model_path} is an SVM on backbone features; export converts fine-tuned networks "
            "(.keras). Use the fine-tuned model of the run (models/*_finetune.keras)"
        )
    require_bound(clf, "exporting it")
    return clf


def _convert_checked(
    model: Any,
    fmt: str,
    out: Path,
    size: int,
    x: np.ndarray,
    expected: np.ndarray,
    cells_from: str,
) -> tuple[dict[str, Any], float, str]:
    """Convert into a staging folder beside ``out``, compare with Keras, then publish.

    Returns the converter's details, the largest difference and the export's SHA-256;
    nothing reaches ``out`` unless the outputs match.
    """
    stage = Path(
        tempfile.mkdtemp(dir=out.parent if str(out.parent) else ".", prefix=f".{out.name}.")
    )
    try:
        staged = stage / (out.name or "export")
        forward, details = CONVERTERS[fmt](model, staged, size)
        got = np.asarray(forward(x), np.float64)
        if got.shape != expected.shape:
            raise ExportError(
                f"the {fmt} export answers shape {got.shape}, Keras {expected.shape}: "
                "the conversion is broken; nothing was written"
            )
        diff = float(np.max(np.abs(got - expected)))
        if not diff <= TOLERANCE:
            raise ExportError(
                f"the {fmt} export's outputs differ from Keras by up to {diff:.2e} on {len(x)} "
                f"{cells_from} images (tolerance {TOLERANCE:.0e}); nothing was written. "
                "Try another format, and report the model and versions as a bloodlib issue",
                exit_code=1,
            )
        del forward  # an ONNX session or interpreter may hold the staged file open
        sha = tree_sha256(staged)
        # Old sidecar first: a kill in between leaves a model without sidecar, never a wrong one.
        export_sidecar_path(out).unlink(missing_ok=True)
        _publish(staged, out)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    return details, diff, sha
