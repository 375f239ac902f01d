"""Average several fine-tuned networks into one model: an ensemble of training seeds.

``python -m bloodlib ensemble MODEL MODEL [...] --out ENSEMBLE.keras`` loads each member
safely (``saved.open_model``: sidecar schema, hash binding, Keras safe mode), checks
that they answer the same question (same classes in the same order, backbone, input size
and weights), and writes one Keras model whose output is the mean of the members' class
probabilities. It is an ordinary bloodlib model: ``classify`` (with ``--tta``,
``--classes``, ``--normalize``), ``scoring.evaluate_model`` and ``export`` take it as they
take one network, and loading it runs no code. Its sidecar lists each member's name, seed
and SHA-256, and its ``metrics.train_seconds`` is the members' training time added up
(what the ensemble cost to train).

Why: networks trained with different seeds agree on PBC (six seeds of one recipe within 0.5
points on the dev test) but not on another lab's cells, where each seed fails on different
cells; averaging their probabilities keeps what they agree on. On tecom it lifts the result
above the members' mean without making it dependable (docs/other-labs.md).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import keras

from bloodlib.core.errors import BloodlibError
from bloodlib.core.hashing import sha256_file
from bloodlib.models import pretrained
from bloodlib.models.saved import (
    SavedModel,
    check_model_out,
    model_seed,
    open_model,
    read_sidecar,
    require_bound,
    save_classifier,
    sidecar_path,
)

#: Sidecar fields the members must share: they say what the outputs mean and what the
#: model expects as input. (``preprocessing`` and ``crop`` live inside each network.)
SHARED_KEYS = ("method", "classes", "backbone", "image_size", "weights")

#: Member sidecar fields that do not describe the ensemble: a member's temperature and
#: rejection threshold were fitted on its own outputs, its metrics and training
#: configuration are its own (each member's is kept under ``ensemble.members``).
NOT_INHERITED = (
    "name",
    "temperature",
    "reject_threshold",
    "metrics",
    "config",
    "model_sha256",
    "binding_sha256",
    "adapt",
    "ensemble",
)


class EnsembleError(BloodlibError):
    """Models that cannot be averaged into one."""


@dataclass
class EnsembleResult:
    model_path: Path
    members: list[dict[str, Any]]
    info: dict[str, Any]

    def report(self) -> str:
        names = ", ".join(m["name"] for m in self.members)
        secs = self.info.get("metrics", {}).get("train_seconds")
        cost = f"; members trained in {secs / 60:.1f} min in all" if secs else ""
        return (
            f"averaged {len(self.members)} networks ({names}) into {self.model_path}{cost}\n"
            f"use it as one model: python -m bloodlib classify {self.model_path} FOLDER --out CSV"
        )


def member_record(clf: SavedModel) -> dict[str, Any]:
    """What the ensemble's sidecar keeps of one member: enough to find and check it again."""
    return {
        "name": clf.info["name"],
        "seed": model_seed(clf.info),
        "model_sha256": clf.sha256,
        "train_seconds": (clf.info.get("metrics") or {}).get("train_seconds"),
        "config": clf.info.get("config"),
    }


def check_members(members: Sequence[SavedModel]) -> None:
    """Raise :class:`EnsembleError` unless the members can be averaged: at least two
    fine-tuned networks, none repeated, answering the same classes from the same input."""
    if len(members) < 2:
        raise EnsembleError(
            "an ensemble averages at least two networks: give two or more models (for example "
            "the _seed<N> models of a run with -p n_seeds=3)"
        )
    first = members[0]
    for m in members:
        if m.info["method"] != "finetune":
            raise EnsembleError(
                f"{m.path}: an ensemble averages fine-tuned networks (.keras); this is an SVM"
            )
        if m.info.get("ensemble"):
            names = ", ".join(x["name"] for x in m.info["ensemble"]["members"])
            raise EnsembleError(f"{m.path} is itself an ensemble: give its members ({names})")
        for key in SHARED_KEYS:
            if m.info.get(key) != first.info.get(key):
                raise EnsembleError(
                    f"{m.path} and {first.path} differ in {key!r} ({m.info.get(key)!r} against "
                    f"{first.info.get(key)!r}): the members of an ensemble must answer the same "
                    "classes, in the same order, from the same input"
                )
    seen: dict[str, Path] = {}
    for m in members:
        if m.sha256 in seen:
            raise EnsembleError(
                f"{m.path} and {seen[m.sha256]} are the same network (same SHA-256): averaging "
                "a network with itself only weighs it twice; give each member once"
            )
        seen[m.sha256] = m.path


def check_out_path(
    out: str | Path, model_paths: Sequence[str | Path], *, force: bool = False
) -> Path:
    """The output rule of every command that writes a model (``saved.check_model_out``):
    never a member or its sidecar, and an existing model only when it averages these very
    members (or with ``force``)."""
    wanted = {sha256_file(p) for p in model_paths if Path(p).is_file()}

    def ours(info: dict[str, Any]) -> bool:
        members = (info.get("ensemble") or {}).get("members") or []
        return {m.get("model_sha256") for m in members} == wanted

    return check_model_out(
        out, inputs=model_paths, role="member", force=force, ours=ours, what="an ensemble"
    )


def average_model(models: Sequence[Any], name: str = "ensemble") -> Any:
    """One Keras model: a shared input, each member on it, the mean of their probabilities."""

    first = models[0]
    inputs = keras.Input(first.input_shape[1:], name="image")
    outputs = []
    for i, member in enumerate(models):
        # Members trained from one recipe carry the same layer names; a nested model's own
        # name must be unique in its parent, so each is wrapped under a numbered name.
        wrapped = keras.Model(member.input, member.output, name=f"member_{i}")
        outputs.append(wrapped(inputs))
    mean = keras.layers.Average(name="mean_probability", dtype="float32")(outputs)
    return keras.Model(inputs, mean, name=name)


def build_ensemble(
    model_paths: Sequence[str | Path], out: str | Path, *, force: bool = False
) -> EnsembleResult:
    """Average the fine-tuned networks at ``model_paths`` into ``out`` (a ``.keras`` file).

    ``force`` replaces an existing model at ``out`` that is not an ensemble of these members.
    """
    model_paths = [pretrained.resolve(p) for p in model_paths]
    out = check_out_path(out, model_paths, force=force)
    members = [open_model(p) for p in model_paths]
    for m in members:
        require_bound(m, "averaging it")
    check_members(members)
    records = [member_record(m) for m in members]
    model = average_model([m.model for m in members], name=Path(out).stem)
    info = {k: v for k, v in members[0].info.items() if k not in NOT_INHERITED}
    info["name"] = Path(out).stem
    info["ensemble"] = {"combine": "mean of the members' class probabilities", "members": records}
    seconds = [r["train_seconds"] for r in records]
    if all(isinstance(s, int | float) for s in seconds):
        info["metrics"] = {"train_seconds": round(float(sum(seconds)), 1)}
    path = save_classifier(model, out, info)
    return EnsembleResult(path, records, info)


def seed_ensemble(model_paths: Sequence[str | Path], out: str | Path) -> EnsembleResult | None:
    """A run's ensemble of its training seeds, kept in step with them (notebook 03).

    Several networks: the ensemble at ``out``, built (seconds: no training) unless the one
    there already averages exactly these files. One network: ``None``, and an ensemble left
    at ``out`` by an earlier run with more seeds is removed with its sidecar, so notebook 04
    never scores an average of networks this run no longer has.
    """
    out = Path(out)
    if len(model_paths) < 2:
        out.unlink(missing_ok=True)
        sidecar_path(out).unlink(missing_ok=True)
        return None
    current = [sha256_file(p) for p in model_paths]
    if out.is_file() and sidecar_path(out).is_file():
        try:
            info = read_sidecar(out)
            recorded = [m["model_sha256"] for m in info["ensemble"]["members"]]
            open_model(out)  # still bound to its sidecar
            if recorded == current:
                return EnsembleResult(out, info["ensemble"]["members"], info)
        except (BloodlibError, KeyError, TypeError):
            pass  # not a valid ensemble of these members: build it again
    # The run's own file (notebook 03 writes it for these seeds): replacing it is the point.
    return build_ensemble(model_paths, out, force=True)
