"""Adapt a saved fine-tuned network to a new lab with a few labelled cells per class.

``python -m bloodlib adapt MODEL FOLDER --out NEW --shots K``: the folder is in the class
layout (any subset of the eight classes, folder names in any case). ``K`` cells per class,
drawn with the seed, train the network's head (``train="head"``), the head and the
backbone's last convolution (``train="top"``: the 1x1 convolution that mixes the last
block's channels into the pooled features, BatchNorm statistics frozen), or the head and
every BatchNormalization layer (``train="bn"``: its scale, offset and running statistics,
which carry much of a lab's colour and contrast); the other cells are held out, and the
accuracy on them is reported before and after. Training uses the study's augmentation
(``pipeline.augment_cell``) with Dropout off (:func:`dropout_off`), on the whole frame
(a base that crops the centre, ``FinetuneConfig.crop``, loses its crop). The new model is
written with ``saved.save_classifier`` and its sidecar records where it came from: the
base model's hash, the cells used (relpaths and content hashes), the shots and the
classes present. With ``unlabelled`` (a folder of the lab's cells without labels) the
loss also lowers the entropy of the predictions on them (:data:`DEFAULT_ENTROPY_WEIGHT`),
and the sidecar records how many there were and one digest of their contents.
"""

from __future__ import annotations

import math
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import keras
import numpy as np
import pandas as pd
import tensorflow as tf

from bloodlib.core import config
from bloodlib.core.config import DEFAULT_SEED
from bloodlib.core.hashing import sha256_file, sha256_text
from bloodlib.data.labs import labelled_cells, unlabelled_cells
from bloodlib.models import pretrained
from bloodlib.models.backbones import leaves
from bloodlib.models.saved import check_model_out, require_bound, save_classifier
from bloodlib.predict.engine import Classifier, load_classifier
from bloodlib.train.few_shot import (
    UNLABELLED_BATCH,
    AdaptError,
    augmented,
    dropout_off,
    effective_batch,
    fit_with_entropy,
    held_out_scores,
    last_block_on,
    predict,
    set_learning,
)
from bloodlib.train.network import whole_frame
from bloodlib.train.recipe import FinetuneConfig

#: What ``train`` may name: the layers that learn while adapting.
TRAIN_MODES = ("head", "top", "block", "bn")

#: Defaults sized for "about a minute on CPU" with 5 shots x 5 classes on EfficientNet-Lite0,
#: measured on tecom (full-profile Lite0, 98.8 % PBC test; 5 shots; 279 held-out cells; 2-core
#: Xeon). Head only, seed 42: 10 epochs at 1e-3 (20 Adam steps) left 11.5 % right; 40 epochs
#: (80 steps of 16) at 1e-2, 85.3 %; at 3e-2, 87.8 %; 80 at 1e-2, 85.7 %. Over draws 42-45:
#: head, 80 steps at 3e-2: 79.4 % (88.9 / 68.8 / 77.4 / 82.4); "top", 200 steps at 3e-3:
#: 87.9 % (90.3 / 82.8 / 91.4 / 87.1), 70-90 s; "top" at 1e-2 x 80 steps 83.8 %, 3e-3 x 120
#: steps 84.3 %, 5e-3 x 200 steps 85.6 %. ("bn" at 3e-2: 54 %; it wants a lower rate.)
#: Frozen-feature probes (a linear head on 8 flips/rotations, logistic regression, class
#: centroids; also on Reinhard-normalised and rescaled cells) stayed at 80-83 %: the head
#: alone cannot separate tecom's classes; the last convolution can move the features.
#: (These ran with Dropout on and unseeded; the defaults with Dropout off, draws 42-47: 86.7 %.)
#: "block" (the last block too; Dropout off, draws 42-47, 200 steps): at 1e-3 87.0 %, at 5e-4
#: 88.4 % (91.4 / 84.6 / 89.6 / 93.5 / 86.4 / 84.9; above "top" on 5 of the 6 draws), at
#: 2.5e-4 87.8 %. (The last four 1x1 convolutions at 3e-3, "top"'s rate, collapsed onto one
#: class; at 5e-4 they gave 88.4 % too.)
DEFAULT_SHOTS = 5
DEFAULT_TRAIN = "block"
#: Adam steps (batches), not epochs: what the rates were tuned for. Epochs follow from the
#: number of cells, so 20 cells per class take about as long as 5.
DEFAULT_STEPS = {"head": 80, "top": 200, "block": 200, "bn": 80}
DEFAULT_LEARNING_RATES = {"head": 3e-2, "top": 3e-3, "block": 5e-4, "bn": 3e-2}
DEFAULT_BATCH_SIZE = 16
#: With ``unlabelled=`` (the lab's cells without labels), the loss adds this weight times the
#: mean entropy of the predictions on them, among the classes present (entropy minimisation,
#: Grandvalet & Bengio 2005; transductive fine-tuning, Dhillon et al., ICLR 2020): the few
#: labelled cells set the classes, the many unlabelled ones pull the boundaries into the gaps
#: between the lab's own clusters. Tecom, 5 shots, "block", draws 42-47, every other cell
#: unlabelled, on a whole-frame base retrained 2026-11-27 (98.54 % PBC): without, 88.2 / 77.4 /
#: 88.9 / 93.5 / 85.3 / 77.4 % (85.1 %); weight 1.0, 87.8 / 83.5 / 92.1 / 92.8 / 93.2 / 76.0 %
#: (87.6 %, balanced 81.5 % against 86.2 %: it pushes the rare classes into neutrophil);
#: weight 0.3 (this CLI), 90.7 / 94.3 / 92.8 / 92.5 / 95.3 / 79.9 % (90.9 %, balanced 85.9 %).
DEFAULT_ENTROPY_WEIGHT = 0.3


def default_epochs(
    train: str, n_cells: int, batch_size: int = DEFAULT_BATCH_SIZE, steps: int | None = None
) -> int:
    """Passes over ``n_cells`` that give about ``steps`` Adam steps (``DEFAULT_STEPS[train]``)."""
    steps_per_epoch = -(-n_cells // effective_batch(batch_size, n_cells))
    return max(1, -(-(steps or DEFAULT_STEPS[train]) // steps_per_epoch))


#: Sidecar fields of the base model that do not carry over: its temperature and rejection
#: threshold were fitted on its own outputs, its metrics measured on PBC.
NOT_INHERITED = ("temperature", "reject_threshold", "metrics", "name")


@dataclass
class AdaptResult:
    model_path: Path
    classes_present: list[str]
    support: pd.DataFrame  # the cells used for adapting: relpath, label, sha256
    held_out: pd.DataFrame  # the other cells, with predictions before and after
    before: dict[str, Any] | None  # accuracy on held-out cells (None: none held out)
    after: dict[str, Any] | None
    seconds: float
    ignored: dict[str, int] = field(default_factory=dict)  # folders naming no class
    unlabelled: pd.DataFrame | None = None  # cells learnt from without labels, if any
    entropy_weight: float = 0.0
    copies: pd.DataFrame | None = None  # copies left out of the folder (labels.labelled_cells)

    def report(self) -> str:
        k = self.support["label"].value_counts().reindex(self.classes_present, fill_value=0)
        lines = [
            f"adapted on {len(self.support)} cells ("
            + ", ".join(f"{c} {n}" for c, n in k.items())
            + f") in {self.seconds:.1f} s; model written to {self.model_path}",
            f"held out: {len(self.held_out)} cells",
        ]
        spent = sorted(set(self.classes_present) - set(self.held_out["label"]))
        if spent:
            lines.append(
                f"every cell of {', '.join(spent)} was used for adapting: none held out to score "
                "it (the held-out accuracy says nothing about it)"
            )
        if self.unlabelled is not None:
            lines.append(
                f"also learnt from {len(self.unlabelled)} unlabelled cells (entropy weight "
                f"{self.entropy_weight:g})"
            )
            seen = set(self.held_out["sha256"]) & set(self.unlabelled["sha256"])
            if seen:
                lines.append(
                    f"{len(seen)} of the held-out cells were among them (their labels unused): "
                    "the held-out accuracy is transductive, measured on cells adapted to"
                )
        if self.copies is not None and len(self.copies):
            counts = self.copies["status"].value_counts()
            lines.append(
                "left out as copies (the same bytes twice, or under two classes): "
                + ", ".join(f"{n} {status}" for status, n in counts.items())
            )
        if self.ignored:
            lines.append(
                "ignored (folders that name no class): "
                + ", ".join(f"{f} ({n})" for f, n in self.ignored.items())
            )
        if self.before and self.after:
            for key, what in (
                ("accuracy", "all classes"),
                ("accuracy_present", "among the classes present"),
                ("balanced_accuracy_present", "balanced, classes present"),
            ):
                lines.append(
                    f"held-out accuracy ({what}): before {self.before[key]:.4f}, "
                    f"after {self.after[key]:.4f}"
                )
        else:
            lines.append("no held-out cells: accuracy not measured (use fewer --shots)")
        return "\n".join(lines)


def choose_support(
    cells: pd.DataFrame, shots: int, seed: int = DEFAULT_SEED
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``shots`` cells per class drawn with ``seed`` (all of a class that has no more), and the rest."""
    if shots < 1:
        raise ValueError(f"shots is {shots}: give at least 1 cell per class")
    rng = np.random.default_rng(seed)
    pick: list[int] = []
    for _, rows in cells.groupby("label", sort=True):
        idx = rows.index.to_numpy()  # in relpath order: the draw depends only on the seed
        pick += rng.permutation(idx)[:shots].tolist()
    mask = cells.index.isin(pick)
    return cells[mask].reset_index(drop=True), cells[~mask].reset_index(drop=True)


def check_options(
    train: str,
    shots: int,
    epochs: int | None,
    batch_size: int,
    learning_rate: float | None,
    entropy_weight: float,
    steps: int | None = None,
) -> None:
    """Every number adapting takes, checked before anything is read or written: counts at
    least 1, a learning rate positive and finite, an entropy weight finite and not negative
    (``inf`` trains a network of NaN weights)."""
    if train not in TRAIN_MODES:
        raise ValueError(f"train must be one of {TRAIN_MODES}, not {train!r}")
    if (epochs is not None and epochs < 1) or batch_size < 1 or shots < 1:
        raise ValueError("shots, epochs and batch_size must be at least 1")
    if steps is not None and (steps < 1 or epochs is not None):
        raise ValueError(
            f"steps is {steps}: give at least 1 Adam step, and epochs or steps, not both"
        )
    if learning_rate is not None and not (math.isfinite(learning_rate) and learning_rate > 0):
        raise ValueError(f"learning_rate is {learning_rate}: give a positive, finite rate")
    if not (math.isfinite(entropy_weight) and entropy_weight >= 0):
        raise ValueError(f"entropy_weight is {entropy_weight}: give a finite weight of 0 or more")


def check_out_path(
    out: str | Path,
    model_path: str | Path,
    folder: str | Path,
    unlabelled: str | Path | None = None,
    *,
    force: bool = False,
) -> Path:
    """The output rule of every command that writes a model (``saved.check_model_out``):
    never the input model or its sidecar, never inside the labelled or unlabelled folder,
    and an existing model only when it was adapted from this same base (or with ``force``)."""
    base = sha256_file(model_path) if Path(model_path).is_file() else None
    return check_model_out(
        out,
        inputs=[model_path],
        role="input model",
        folders={"labelled folder": folder, "unlabelled folder": unlabelled},
        force=force,
        ours=lambda info: base is not None and info.get("base_model_sha256") == base,
        what="an adapted network",
    )


def load_base(model_path: str | Path) -> Classifier:
    """The network to adapt: a fine-tuned model (not an SVM, not an ensemble) whose sidecar
    is bound to it, since the new sidecar will be bound in its turn."""
    clf = load_classifier(model_path)
    name = Path(model_path).name
    if clf.info["method"] != "finetune":
        raise AdaptError(f"{name} is an SVM: adapt fine-tunes a network (a .keras model)")
    if clf.info.get("ensemble"):
        raise AdaptError(
            f"{name} is an ensemble of {len(clf.info['ensemble']['members'])} networks: adapt "
            "each member (its sidecar's ensemble.members names them), then average the adapted "
            "networks with python -m bloodlib ensemble"
        )
    require_bound(clf, "adapting it")
    return clf


def adapt(
    model_path: str | Path,
    folder: str | Path,
    out: str | Path,
    *,
    shots: int = DEFAULT_SHOTS,
    epochs: int | None = None,
    steps: int | None = None,
    seed: int = DEFAULT_SEED,
    train: str = DEFAULT_TRAIN,
    learning_rate: float | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    unlabelled: str | Path | None = None,
    entropy_weight: float = DEFAULT_ENTROPY_WEIGHT,
    force: bool = False,
    verbose: int = 0,
) -> AdaptResult:
    """Fine-tune ``model_path`` on ``shots`` labelled cells per class of ``folder``; save to ``out``.

    Everything is checked before training: the numbers (:func:`check_options`), the output
    path (:func:`check_out_path`), the model (:func:`load_base`), the folder (every class
    folder has a usable cell; copies left out). Accuracy on the held-out cells is measured
    before and after with the same Keras forward pass. ``epochs`` and ``learning_rate``
    default per ``train`` mode (:data:`DEFAULT_STEPS`, :data:`DEFAULT_LEARNING_RATES`);
    ``steps``, about that many Adam steps instead (the epochs follow).
    ``unlabelled``, a folder of the lab's cells without labels (any layout; it may be the
    labelled folder itself, whose labels are then not read), adds ``entropy_weight`` x the
    entropy of the predictions on them to the loss (:data:`DEFAULT_ENTROPY_WEIGHT`).
    """
    start, model_path = time.perf_counter(), pretrained.resolve(model_path)
    check_options(train, shots, epochs, batch_size, learning_rate, entropy_weight, steps)
    out = check_out_path(out, model_path, folder, unlabelled, force=force)
    # Seed before loading: Keras draws each Dropout layer's seed from Python's `random` when
    # the layer is built, so a model loaded first drops different units on every call.
    config.set_seeds(seed)
    clf = load_base(model_path)
    cells, ignored, copies = labelled_cells(folder)
    support, held = choose_support(cells, shots, seed)
    unl = None if unlabelled is None else unlabelled_cells(unlabelled, set(support["sha256"]), seed)
    if train == "block":  # refuse a backbone without known blocks before training
        last_block_on(leaves(clf.model), clf.info.get("backbone"))
    present = [c for c in clf.classes if c in set(cells["label"])]
    run = _Run(clf, present, batch_size, seed)
    before, p0 = run.score(held)
    model, base_cfg, crop = _whole_frame_copy(clf)
    epochs = epochs or default_epochs(train, len(support), batch_size, steps)
    learning_rate = learning_rate or DEFAULT_LEARNING_RATES[train]
    n_train = set_learning(model, train, clf.info.get("backbone"))
    smoothing = float(base_cfg.get("label_smoothing", 0.1))  # the base recipe's
    run.fit(model, support, unl, epochs, learning_rate, smoothing, entropy_weight, verbose)
    run.model = model
    after, p1 = run.score(held)
    held = _with_answers(held, clf.classes, p0, p1)
    seconds = time.perf_counter() - start
    record = {
        **{"epochs": int(epochs), "seed": int(seed), "train": train},
        **{"trainable_weights": int(n_train), "learning_rate": float(learning_rate)},
        **{"batch_size": int(batch_size), "seconds": round(seconds, 1)},
        "base_crop_removed": crop < 1.0,
        "unlabelled": _unlabelled_record(unl, entropy_weight),
    }
    info = _adapted_sidecar(
        clf, out, base_cfg, support, held, shots, present, record, before, after
    )
    save_classifier(model, out, info)
    return AdaptResult(
        out,
        present,
        support,
        held,
        before,
        after,
        seconds,
        ignored,
        unlabelled=unl,
        entropy_weight=float(entropy_weight) if unl is not None else 0.0,
        copies=copies,
    )


@dataclass
class _Run:
    """What scoring and fitting share within one call of :func:`adapt`."""

    clf: Classifier
    present: list[str]
    batch_size: int
    seed: int
    model: Any = None

    def score(self, held: pd.DataFrame) -> tuple[dict[str, Any] | None, np.ndarray | None]:
        """Held-out accuracy of ``self.model`` (the base until set), and its probabilities."""
        if not len(held):
            return None, None
        model = self.model if self.model is not None else self.clf.model
        p = predict(model, held["path"].tolist(), self.clf.image_size, self.batch_size)
        return held_out_scores(p, held["label"], self.clf.classes, self.present), p

    def fit(
        self,
        model: Any,
        support: pd.DataFrame,
        unl: pd.DataFrame | None,
        epochs: int,
        learning_rate: float,
        smoothing: float,
        entropy_weight: float,
        verbose: int,
    ) -> None:
        """The support's cross-entropy (plus the unlabelled cells' entropy, when given)."""
        classes, size = self.clf.classes, self.clf.image_size
        y = support["label"].map({c: i for i, c in enumerate(classes)}).to_numpy()
        batch = effective_batch(self.batch_size, len(support))
        ds = augmented(support["path"].tolist(), y, size, batch, self.seed).map(
            _one_hot(len(classes))
        )
        with warnings.catch_warnings(), dropout_off(model):
            if unl is None:
                model.compile(
                    optimizer=keras.optimizers.Adam(learning_rate),
                    loss=keras.losses.CategoricalCrossentropy(label_smoothing=smoothing),
                )
                # The dataset shuffles itself (pipeline.make_dataset).
                warnings.filterwarnings(
                    "ignore", message="`shuffle=True` was passed", category=UserWarning
                )
                model.fit(ds, epochs=epochs, verbose=verbose)
                return
            # seed + 1: not the support's shuffle and augmentation stream
            stream = augmented(
                unl["path"].tolist(),
                None,
                size,
                min(UNLABELLED_BATCH, len(unl)),
                self.seed + 1,
                True,
            )
            present_idx = [classes.index(c) for c in self.present]
            fit_with_entropy(
                model,
                ds,
                stream,
                epochs,
                learning_rate,
                smoothing,
                present_idx,
                entropy_weight,
                progress=bool(verbose),
            )


def _one_hot(k: int):
    """A dataset map from (image, class index) to (image, one-hot over ``k`` classes).

    A named function rather than a lambda: AutoGraph reads a lambda's source to convert it,
    and warns (into the notebook) when its line holds more than one.
    """

    def encode(x, t):
        return x, tf.one_hot(t, k)

    return encode


def _with_answers(
    held: pd.DataFrame, classes: list[str], before: np.ndarray | None, after: np.ndarray | None
) -> pd.DataFrame:
    """The held-out cells with the class each model gave them, before and after adapting."""
    if not len(held):
        return held
    return held.assign(
        before=[classes[i] for i in before.argmax(axis=1)],
        after=[classes[i] for i in after.argmax(axis=1)],
    )


def _whole_frame_copy(clf: Classifier) -> tuple[Any, dict[str, Any], float]:
    """The network to train, its recipe as adapted, and the base's crop.

    A model that crops the centre of PBC's frame (``FinetuneConfig.crop``) would cut another
    lab's cells, which fill theirs: adapt the same weights on the whole frame. Tecom, 5
    shots, draws 42-44: cropped 83.9 / 71.3 / 80.6 %, whole frame 90.0 / 82.1 / 80.3 %.
    """
    base_cfg = clf.info.get("config") or {}
    crop = float(base_cfg.get("crop", 1.0))
    if crop >= 1.0:
        return clf.model, base_cfg, crop
    model = whole_frame(clf.model, FinetuneConfig.from_sidecar(base_cfg))
    return model, {**base_cfg, "crop": 1.0}, crop


def _unlabelled_record(unl: pd.DataFrame | None, entropy_weight: float) -> dict[str, Any] | None:
    if unl is None:
        return None
    return {
        "cells": len(unl),
        # one digest of the contents learnt from: sorted, so it ignores names and order
        "sha256": sha256_text("\n".join(sorted(unl["sha256"]))),
        "entropy_weight": float(entropy_weight),
    }


def _adapted_sidecar(
    clf: Classifier,
    out: Path,
    base_cfg: dict[str, Any],
    support: pd.DataFrame,
    held: pd.DataFrame,
    shots: int,
    present: list[str],
    record: dict[str, Any],
    before: dict[str, Any] | None,
    after: dict[str, Any] | None,
) -> dict[str, Any]:
    """The new model's sidecar: the base's (less what was fitted on its own outputs), and
    where it came from: the base's hash, the cells used and held out, the training."""
    info = {k: v for k, v in clf.info.items() if k not in NOT_INHERITED}
    if base_cfg:
        info["config"] = base_cfg  # as adapted: the whole frame
    info.update(
        name=out.stem,
        base_model=clf.path.name,
        base_model_sha256=clf.sha256,
        adapted_on=[
            {"relpath": r.relpath, "sha256": r.sha256, "label": r.label}
            for r in support.itertuples()
        ],
        held_out=held["relpath"].tolist(),
        shots=int(shots),
        classes_present=present,
        adapt=record,
        metrics={"held_out_before": before, "held_out_after": after},
    )
    return info
