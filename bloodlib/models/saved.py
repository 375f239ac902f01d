"""Saved classifiers: a model file plus a small JSON sidecar, and one safe way to load either kind.

``models/<name>.keras`` (fine-tuned network) or ``models/<name>.skops`` (SVM on
backbone features) sits beside ``models/<name>.json``, which says what the
model expects (classes, input size, preprocessing, backbone, weights origin)
and what it scored.

Loading never runs code from the file: the loader follows the file's actual format
(its first bytes, never its name or the sidecar's word), Keras loads in safe mode,
an SVM loads with skops and an explicit list of trusted types, and a pickle (the
``.joblib`` SVMs of older versions) loads only when the caller says it trusts it.
The sidecar is tied to its model by the model's content hash and a hash of the fields
that say what the outputs mean, so a swapped model or an edited class list is an error,
never a silent mislabelling.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import warnings
import zipfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.pipeline import Pipeline

from bloodlib import CLASSES
from bloodlib.core.errors import BloodlibError, UnsafeModelError
from bloodlib.core.hashing import sha256_file
from bloodlib.core.io import atomic_path, json_default, read_json, write_json
from bloodlib.core.paths import check_output, check_replace
from bloodlib.models import pretrained, svm

#: Kept for callers of the old name: the one content hash lives in ``bloodlib.core.io``.
file_sha256 = sha256_file

METHODS = ("svm", "finetune")

#: Model formats bloodlib tells apart by their bytes: the suffix each must carry and the
#: sidecar ``method`` it may serve. A pickle is the one format that can run code on load.
FORMATS: dict[str, tuple[str, str]] = {
    "keras": (".keras", "finetune"),
    "skops": (".skops", "svm"),
    "pickle": (".joblib", "svm"),
}

#: The file names a saved model may have (each beside its JSON sidecar).
MODEL_SUFFIXES: tuple[str, ...] = tuple(suffix for suffix, _ in FORMATS.values())

#: Sidecar fields that say what the model's outputs mean. ``binding_sha256`` hashes them
#: with ``model_sha256``: editing any of them (reordering ``classes``) breaks the binding.
BOUND_KEYS = ("method", "backbone", "classes", "image_size", "weights")

_HEX64 = re.compile(r"[0-9a-f]{64}")


class SidecarError(UnsafeModelError):
    """A sidecar that is missing, malformed, or that does not describe its model file."""


def sidecar_path(model_path: str | Path) -> Path:
    return Path(model_path).with_suffix(".json")


def check_model_out(
    out: str | Path,
    *,
    inputs: Sequence[str | Path],
    role: str,
    folders: Mapping[str, str | Path | None] | None = None,
    force: bool = False,
    ours: Callable[[dict[str, Any]], bool],
    what: str,
) -> Path:
    """The rule of every command that writes a model (``adapt``, ``ensemble``): a ``.keras``
    file with its sidecar, never onto an input model or its sidecar nor inside a folder
    read (``core.paths.check_output``), replacing an existing model only when its sidecar
    says it is an earlier result of the same work (``ours(sidecar)``) or with ``force``.
    """
    side = sidecar_path(out)
    out = check_output(
        out,
        writes=[side],
        inputs=[*inputs, *(sidecar_path(p) for p in inputs)],
        role=role,
        folders=folders,
        suffix=".keras",
        what=what,
    )
    mine = False
    if out.is_file() and side.is_file():
        try:
            mine = bool(ours(read_sidecar(out)))
        except SidecarError:
            mine = False
    check_replace(out, ours=mine, force=force, what=f"{what} made from these inputs", sidecar=side)
    return out


# --- formats -----------------------------------------------------------------------------


def sniff_format(path: str | Path) -> str:
    """``keras``, ``skops``, ``pickle`` or ``unknown``, from the file's bytes alone.

    A ``.keras`` file is a zip holding ``config.json`` and ``metadata.json``; a skops
    file is a zip holding ``schema.json``; a pickle (protocol 2 and later, what joblib
    writes uncompressed) starts with the PROTO opcode 0x80.
    """
    with open(path, "rb") as fh:
        head = fh.read(4)
    if head[:1] == b"\x80":
        return "pickle"
    if head == b"PK\x03\x04":
        try:
            with zipfile.ZipFile(path) as zf:
                names = set(zf.namelist())
        except (zipfile.BadZipFile, OSError, ValueError):
            return "unknown"
        is_keras = {"config.json", "metadata.json"} <= names
        is_skops = "schema.json" in names
        if is_keras != is_skops:
            return "keras" if is_keras else "skops"
    return "unknown"


# --- sidecar -----------------------------------------------------------------------------


def _fail(path: Path, problem: str) -> SidecarError:
    return SidecarError(
        f"{path}: {problem}. A bloodlib sidecar is a JSON object with 'method' "
        f"({' or '.join(METHODS)}), 'classes' (a list of unique names), 'image_size' "
        "(a positive integer) and 'backbone'; re-save the model (re-run the run) to rewrite it"
    )


def validate_sidecar(info: Any, path: str | Path = "sidecar") -> dict[str, Any]:
    """The sidecar's schema, checked: a clear :class:`SidecarError` instead of a traceback later."""
    path = Path(path)
    if not isinstance(info, dict):
        raise _fail(path, f"holds a JSON {type(info).__name__}, not an object")
    method = info.get("method")
    if method not in METHODS:
        raise _fail(path, f"'method' is {method!r}" if "method" in info else "'method' is missing")
    classes = info.get("classes")
    if not isinstance(classes, list) or not classes:
        raise _fail(path, "'classes' is missing or not a non-empty list")
    if not all(isinstance(c, str) and c for c in classes):
        raise _fail(path, "'classes' holds something other than non-empty strings")
    if len({c.lower() for c in classes}) != len(classes):
        raise _fail(path, "'classes' names a class twice (case is not a difference)")
    size = info.get("image_size")
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise _fail(path, f"'image_size' is {size!r}, not a positive integer")
    backbone = info.get("backbone")
    if not isinstance(backbone, str) or not backbone:
        raise _fail(path, f"'backbone' is {backbone!r}, not a backbone name")
    weights = info.get("weights")
    if weights is not None and not isinstance(weights, str):
        raise _fail(path, f"'weights' is {weights!r}, not a string or null")
    for key in ("model_sha256", "binding_sha256"):
        value = info.get(key)
        if value is not None and not (isinstance(value, str) and _HEX64.fullmatch(value)):
            raise _fail(path, f"'{key}' is not a SHA-256 hex digest")
    if "name" in info and not isinstance(info["name"], str):
        raise _fail(path, "'name' is not a string")
    # Optional fields of the rejection rule (bloodlib.evaluate.reject), recorded by a study.
    t = info.get("temperature")
    if t is not None and not (_is_number(t) and t > 0):
        raise _fail(path, f"'temperature' is {t!r}, not a positive number")
    r = info.get("reject_threshold")
    if r is not None and not (_is_number(r) and 0 <= r <= 1):
        raise _fail(path, f"'reject_threshold' is {r!r}, not a probability in 0..1")
    return info


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and np.isfinite(value)


def update_sidecar(model_path: str | Path, **fields: Any) -> dict[str, Any]:
    """Add or replace unbound sidecar fields (``temperature``, ``reject_threshold``, ...).

    For what a study learns after saving a model. The fields that give the outputs their
    meaning (:data:`BOUND_KEYS`) and the hashes cannot change here: re-save the model.
    The sidecar must still belong to its model; it is rewritten atomically.
    """
    forbidden = set(fields) & {*BOUND_KEYS, "model_sha256", "binding_sha256"}
    if forbidden:
        raise ValueError(f"{', '.join(sorted(forbidden))} cannot be updated: re-save the model")
    saved = open_model(model_path)
    info = json.loads(json.dumps({**saved.info, **fields}, default=json_default))
    validate_sidecar(info, sidecar_path(model_path))
    write_json(sidecar_path(model_path), info)
    return info


def binding_sha256(info: dict[str, Any], model_sha256: str) -> str:
    """Hash of the model's content hash and the sidecar fields that give its outputs meaning."""
    bound = {"model_sha256": model_sha256, **{k: info.get(k) for k in BOUND_KEYS}}
    return hashlib.sha256(
        json.dumps(bound, sort_keys=True, separators=(",", ":")).encode("utf-8")
    ).hexdigest()


def model_seed(info: dict[str, Any]) -> int | None:
    """The training seed a sidecar records: ``seed`` (SVM) or ``config.seed`` (fine-tuned);
    ``None`` for a model saved before bloodlib recorded it, or an ensemble of seeds."""
    seed = info.get("seed", (info.get("config") or {}).get("seed"))
    return None if seed is None else int(seed)


def read_sidecar(model_path: str | Path) -> dict[str, Any]:
    """The validated sidecar of ``model_path`` (its binding to the model is checked on load)."""
    path = sidecar_path(model_path)
    if not path.is_file():
        raise SidecarError(
            f"{path} not found: a bloodlib model needs its JSON sidecar beside the model file "
            "(copy both files together)"
        )
    try:
        info = read_json(path)
    except (ValueError, UnicodeDecodeError) as exc:
        raise _fail(path, f"is not valid JSON ({exc})") from exc
    return validate_sidecar(info, path)


def _check_binding(path: Path, info: dict[str, Any], sha: str) -> None:
    side = sidecar_path(path)
    recorded = info.get("model_sha256")
    if recorded is None:
        # Models saved before sidecars recorded the hash exist in users' runs: they still
        # load, loudly, when their classes are bloodlib's, in bloodlib's order. Any other
        # class list could be an edit that relabels every prediction, and nothing can tell.
        if list(info["classes"]) != list(CLASSES):
            raise SidecarError(
                f"{side} records no model_sha256 (an older or edited sidecar) and lists the "
                f"classes {info['classes']}, not bloodlib's {list(CLASSES)} in that order: "
                "nothing proves the order is the model's, and a wrong order mislabels every "
                "prediction. Restore the original sidecar, or re-save the model (re-run the run)"
            )
        warnings.warn(
            f"{side} records no model_sha256 (saved by an older bloodlib), so nothing proves it "
            f"belongs to {path.name}; re-save the model (re-run the run) to tie them together",
            UserWarning,
            stacklevel=3,
        )
        return
    if recorded != sha:
        raise SidecarError(
            f"the sidecar {side} does not belong to this model file {path}: it was written for "
            f"a file with SHA-256 {recorded[:16]}..., this one is {sha[:16]}... (a model replaced "
            "or a sidecar copied from another model). Keep each model with its own sidecar, or "
            "re-save it (re-run the run)"
        )
    if info.get("binding_sha256") != binding_sha256(info, sha):
        raise SidecarError(
            f"the sidecar {side} was edited after the model was saved: its "
            f"{', '.join(BOUND_KEYS)} no longer match what {path.name} was saved with "
            "(reordered classes would mislabel every prediction). Restore the original sidecar "
            "or re-save the model"
        )


def require_bound(saved: SavedModel, doing: str) -> None:
    """Refuse to derive a new model from one whose sidecar is not bound to it.

    A command that writes a model (``adapt``, ``ensemble``, ``export``) binds its new
    sidecar to its new file: from an unbound input that would turn "nothing proves this
    sidecar is the model's" into a proof, silently.
    """
    if saved.info.get("model_sha256") is None:
        raise SidecarError(
            f"{sidecar_path(saved.path)} records no model_sha256, so nothing proves it describes "
            f"{saved.path.name}; {doing} would write a new sidecar, bound to a new file, that "
            "carries its word on. Re-save the model first (re-run the notebook that trained it)"
        )


def require_finite(model: Any, what: str) -> None:
    """Refuse a network with a NaN or infinite weight: it would answer NaN for every cell."""
    bad = [w.name for w in model.weights if not np.isfinite(np.asarray(w)).all()]
    if bad:
        raise BloodlibError(
            f"{what} has non-finite weights ({', '.join(bad[:3])}{', ...' if len(bad) > 3 else ''}): "
            "training diverged, so nothing was written; lower the learning rate",
            exit_code=1,
        )


def _check_format(path: Path, fmt: str, method: str, trust_pickle: bool) -> None:
    if fmt == "unknown":
        raise UnsafeModelError(
            f"{path} is not a model format bloodlib saves (a .keras zip or a .skops zip); "
            "refusing to load it"
        )
    suffix, serves = FORMATS[fmt]
    if path.suffix.lower() != suffix:
        raise UnsafeModelError(
            f"{path} is a {fmt} file named {path.suffix or '(no suffix)'}: a file whose name "
            "hides its format is refused (a disguised pickle could run code)"
        )
    if serves != method:
        raise UnsafeModelError(
            f"{path} is a {fmt} file but its sidecar says method {method!r}: the sidecar does "
            "not describe this file; refusing to load it"
        )
    if fmt == "pickle" and not trust_pickle:
        raise UnsafeModelError(
            f"{path} is a pickle (an SVM saved by an older bloodlib): loading a pickle can run "
            "arbitrary code hidden in the file, so bloodlib refuses it by default. Re-run the run "
            "to re-save it as .skops, or, only if you trust where the file came from, convert it "
            f"once with: python -m bloodlib convert-model {path} --trust-pickle"
        )


# --- saving ------------------------------------------------------------------------------


def save_classifier(
    model: Any, model_path: str | Path, info: dict[str, Any], *, storage: str = "float32"
) -> Path:
    """Write a model and its sidecar: the one place a bloodlib classifier is saved.

    ``info["method"]`` decides the format: ``finetune`` -> a Keras model in ``.keras``,
    ``svm`` -> a scikit-learn pipeline in ``.skops``. The classes must match the model's
    outputs. The model is written atomically first, then the sidecar with the model's
    ``model_sha256`` and ``binding_sha256``. ``storage="float16"`` (a network only) halves
    the file (:func:`store_float16`); the sidecar records it. Returns ``model_path``.
    """
    model_path = Path(model_path)
    if storage not in STORAGES:
        raise ValueError(f"storage is {storage!r}; one of {', '.join(STORAGES)}")
    info = json.loads(json.dumps({"name": model_path.stem, **info}, default=json_default))
    for key in ("model_sha256", "binding_sha256", "storage"):
        info.pop(key, None)
    if storage != "float32":
        if info.get("method") != "finetune":
            raise ValueError(f"only a network is stored in {storage}, not a {info.get('method')}")
        info["storage"] = storage
    validate_sidecar(info, sidecar_path(model_path))
    method = info["method"]
    suffix = next(s for fmt, (s, m) in FORMATS.items() if m == method and fmt != "pickle")
    if model_path.suffix != suffix:
        raise ValueError(f"a {method} model is saved as {suffix}, not {model_path.name}")
    check_outputs(model, method, len(info["classes"]), model_path)
    if method == "finetune":  # never write a network that answers NaN
        require_finite(model, f"the network for {model_path.name}")
    if method == "svm":
        svm.save(model, model_path)
    else:
        with atomic_path(model_path, suffix=".keras") as tmp:
            model.save(tmp)
            if storage == "float16":
                store_float16(tmp)
    sha = sha256_file(model_path)
    info["model_sha256"] = sha
    info["binding_sha256"] = binding_sha256(info, sha)
    write_json(sidecar_path(model_path), info)
    return model_path


#: How a network's weights may be stored on disk. Keras casts them to the variables' dtype
#: (float32) when it loads, so a float16 file computes in float32 like any other.
STORAGES = ("float32", "float16")

#: The member of a ``.keras`` archive that holds the weights (Keras 3's v3 format).
_WEIGHTS_MEMBER = "model.weights.h5"


def store_float16(path: str | Path) -> None:
    """Rewrite a ``.keras`` file in place with its float32 weights stored as float16, deflated.

    Half the bytes, for a network that ships inside the package; float16 keeps about three
    significant digits of each weight. A shipped network's sidecar scores the float16 file
    itself (``bloodlib.study.pretrain.publish``), not the float32 network it came from.
    """
    import h5py  # lazy: Keras's own dependency, needed only here

    path = Path(path)
    with zipfile.ZipFile(path) as archive:
        members = {m: archive.read(m) for m in archive.namelist()}
    if _WEIGHTS_MEMBER not in members:
        raise ValueError(f"{path}: no {_WEIGHTS_MEMBER}; not a Keras 3 .keras file")
    src, dst = io.BytesIO(members[_WEIGHTS_MEMBER]), io.BytesIO()
    with h5py.File(src, "r") as fin, h5py.File(dst, "w") as fout:
        fout.attrs.update(fin.attrs)

        def copy(name: str, obj: Any) -> None:
            if isinstance(obj, h5py.Dataset):
                value = obj[()]
                if value.dtype == np.float32:
                    value = value.astype(np.float16)
                fout.create_dataset(name, data=value)
            else:
                fout.require_group(name)
            fout[name].attrs.update(obj.attrs)

        fin.visititems(copy)
    members[_WEIGHTS_MEMBER] = dst.getvalue()
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for member, data in members.items():
            archive.writestr(member, data)


def check_outputs(model: Any, method: str, n_classes: int, where: str | Path) -> None:
    """The model answers ``n_classes`` columns, or a :class:`SidecarError` saying what it answers."""
    if method == "svm":
        labels = np.asarray(getattr(model, "classes_", []))
        # An SVM predicts class indices; a class missing from its training split has no
        # column (svm.predict_proba fills a zero), so fewer labels than classes is fine.
        ok = labels.size and labels.dtype.kind in "iu" and 0 <= labels.min()
        if not ok or labels.max() >= n_classes:
            raise SidecarError(
                f"{where}: the SVM predicts class indices {labels.tolist()}, which do not fit "
                f"the sidecar's {n_classes} classes; the sidecar does not describe this model"
            )
        return
    shape = getattr(model, "output_shape", None)
    if not (isinstance(shape, tuple) and len(shape) == 2 and shape[-1] == n_classes):
        raise SidecarError(
            f"{where}: the network's output is {shape}, but the sidecar lists {n_classes} "
            f"classes (expected (None, {n_classes})); the sidecar does not describe this model"
        )


def _check_svm_features(model: Any, backbone: str, where: str | Path) -> None:
    """An SVM reads the features of its sidecar's backbone: it must be known and fit the SVM."""
    from bloodlib.models import backbones  # lazy: it imports Keras, which a sidecar never needs

    bb = backbones.REGISTRY.get(backbone)
    if bb is None:
        raise SidecarError(
            f"{where}: the sidecar's backbone {backbone!r} is not one bloodlib knows "
            f"({', '.join(sorted(backbones.REGISTRY))}); an SVM needs it to compute its features"
        )
    n = getattr(model, "n_features_in_", None)
    if n is not None and int(n) != bb.feature_dim:
        raise SidecarError(
            f"{where}: the SVM reads {n} features, but {backbone} gives {bb.feature_dim}; "
            "the sidecar names another backbone than the one this SVM was trained on"
        )


# --- loading -----------------------------------------------------------------------------


@dataclass
class SavedModel:
    """A model file whose sidecar, format and binding were checked; the model loads on first use."""

    path: Path
    info: dict[str, Any]
    #: The file's format as sniffed from its bytes: "keras", "skops" or "pickle".
    format: str = "keras"
    _sha256: str | None = field(default=None, repr=False)
    _model: Any = field(default=None, repr=False)

    @property
    def classes(self) -> list[str]:
        return list(self.info["classes"])

    @property
    def image_size(self) -> int:
        return int(self.info["image_size"])

    @property
    def sha256(self) -> str:
        if self._sha256 is None:
            self._sha256 = sha256_file(self.path)
        return self._sha256

    @property
    def model(self) -> Any:
        """The SVM pipeline or Keras model, loaded safely on first use and checked against the
        sidecar's classes (and, for an SVM, its backbone's features)."""
        if self._model is None:
            model = _load_keras(self.path) if self.format == "keras" else _load_svm(self)
            check_outputs(model, self.info["method"], len(self.classes), self.path)
            if self.info["method"] == "svm":
                _check_svm_features(model, self.info["backbone"], self.path)
            self._model = model
        return self._model


def _load_keras(path: Path) -> Any:
    import keras  # lazy: reading a sidecar or an SVM needs no TensorFlow

    import bloodlib.models.backbones  # noqa: F401  (registers custom layers before loading)

    try:  # safe mode refuses Lambda layers and other code in the config
        return keras.models.load_model(path, compile=False, safe_mode=True)
    except Exception as exc:  # noqa: BLE001 (the user's file is at fault, say so)
        raise UnsafeModelError(
            f"{path}: Keras could not load it in safe mode ({type(exc).__name__}: {exc})"
        ) from exc


def _load_svm(saved: SavedModel) -> Any:
    # A pickle gets here only past open_model(trust_pickle=True).
    return svm.load_pickle(saved.path) if saved.format == "pickle" else svm.load(saved.path)


def open_model(
    path: str | Path, *, trust_pickle: bool = False, kind: type[SavedModel] = SavedModel
) -> SavedModel:
    """A ``.keras`` or ``.skops`` model (or a shipped network's name, ``pbc-lite0``) with its
    sidecar; the model itself loads on first use.

    Checked here, before any work: the sidecar's schema, the file's real format against
    its name and the sidecar's method, and the sidecar's binding to this file. A pickle
    (``.joblib``) is refused unless ``trust_pickle``: unpickling can run arbitrary code.
    ``kind``: the class returned (``bloodlib.predict.engine.Classifier`` adds predicting).
    """
    path = pretrained.resolve(path)  # a shipped network by name: pbc-lite0
    if not path.is_file():
        raise FileNotFoundError(f"model file not found: {path}")
    info = read_sidecar(path)
    info.setdefault("name", path.stem)
    fmt = sniff_format(path)
    _check_format(path, fmt, info["method"], trust_pickle)
    sha = sha256_file(path)
    _check_binding(path, info, sha)
    return kind(path, info, format=fmt, _sha256=sha)


def convert_pickle(path: str | Path, *, trust_pickle: bool = False) -> Path:
    """Re-save an old pickled SVM (``.joblib``) as ``.skops`` beside it, with a bound sidecar.

    Unpickling runs whatever the file holds, so this too needs ``trust_pickle``. The
    sidecar (shared by name) then belongs to the ``.skops`` file; the ``.joblib`` is left
    for the user to delete.
    """
    saved = open_model(path, trust_pickle=trust_pickle)
    if saved.format != "pickle":
        raise UnsafeModelError(f"{path} is a {saved.format} file, not a pickle: nothing to convert")
    model = saved.model
    if not isinstance(model, Pipeline):
        raise UnsafeModelError(
            f"{path} holds a {type(model).__name__}, not a bloodlib SVM pipeline"
        )
    return save_classifier(model, saved.path.with_suffix(".skops"), saved.info)
