"""Another lab's cells (notebook 05): how far a PBC model falls, why, and what each remedy buys.

The measurement behind issue 12, in pieces a notebook calls and a test can check:

- the other lab: a real folder in the class layout, or a *synthetic* one written from the
  run's PBC test cells (:func:`synthetic_lab`; ``look.other_lab``), with a fingerprint of
  its files (:func:`load_lab`);
- the shift itself: colour (CIELAB means and spreads) and size (the stained nucleus's share
  of the frame) of both labs' cells (:func:`cell_statistics`, :func:`shift_table`);
- the remedies, each scored the same way (:func:`score`): the classes a lab has
  (``reject.restrict``), Reinhard colour normalisation and one zoom per lab
  (``look.make_transform``), rejection at the threshold notebook 04 recorded, the robust
  recipe (:func:`train_robust`: ``FinetuneConfig.augment_domain``), and adapting on a few
  labelled cells (:func:`adapt_curve`: ``adapt.adapt``);
- the sentences that state these numbers (generated, never typed).

Plotting lives in :mod:`bloodlib.teach.domain_plots`; nothing here draws.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from bloodlib import CLASSES
from bloodlib.core.config import DEFAULT_SEED, ensemble_name, robust_name
from bloodlib.core.hashing import sha256_file
from bloodlib.core.io import write_json
from bloodlib.data import look, stain
from bloodlib.evaluate import reject, results
from bloodlib.evaluate.compare import PairedComparison, paired_comparison
from bloodlib.models.saved import read_sidecar, sidecar_path
from bloodlib.train import adapt
from bloodlib.train.finetune import train
from bloodlib.train.recipe import FinetuneConfig

#: Bootstrap resamples for the robust model's metrics.json entry (as notebook 04's full runs).
N_BOOT = 1000


# --- the other lab -----------------------------------------------------------------------


# --- why it fails: colour and size ---------------------------------------------------------


# --- predicting and scoring ----------------------------------------------------------------


def seed_ensemble_path(model_path: str | Path) -> Path | None:
    """The ensemble of ``model_path``'s training seeds beside it (notebook 03 writes it when
    ``n_seeds`` > 1), if there is one and ``model_path`` is among its members; else ``None``."""

    model_path = Path(model_path)
    path = model_path.with_name(f"{ensemble_name(model_path.stem)}.keras")
    if not path.is_file():
        return None
    members = (read_sidecar(path).get("ensemble") or {}).get("members") or []
    return path if sha256_file(model_path) in {m.get("model_sha256") for m in members} else None


def base_model_path(run_dir: str | Path, model_name: str | None = None) -> Path:
    """The model to study: ``models/<model_name>`` (``.keras`` optional), else the fine-tuned one.

    Without a name, the run's ``models/*_finetune.keras`` (the first by name when there are
    several); a FileNotFoundError says which notebook makes it.
    """
    models = Path(run_dir) / "models"
    if model_name:
        path = Path(model_name)
        if not path.is_absolute() and path.parent == Path("."):
            path = models / path
        if path.suffix != ".keras":
            path = path.with_name(path.name + ".keras")
        if not path.is_file():
            raise FileNotFoundError(
                f"model_name = {model_name!r}: no {path}; the run's networks are: "
                f"{', '.join(sorted(p.name for p in models.glob('*.keras'))) or 'none'}"
            )

        # (A missing sidecar is load_classifier's to report, with its fix.)
        if sidecar_path(path).is_file() and read_sidecar(path).get("ensemble"):
            raise ValueError(
                f"model_name = {model_name!r} is an ensemble: this notebook adapts and retrains "
                "its base network, so give one of its members; score the ensemble on the lab's "
                "cells with python -m bloodlib classify"
            )
        return path
    found = sorted(models.glob("*_finetune.keras"))
    if not found:
        raise FileNotFoundError(
            f"no fine-tuned network in {models}: run notebook 03 with the same run_dir first "
            "(or give model_name)"
        )
    return found[0]


def predict(
    clf: Any,
    paths: Sequence[str],
    *,
    normalize: str | None = None,
    zoom: float | None = None,
    stains: stain.StainVectors | None = None,
    tta: bool = False,
    batch_size: int = 32,
) -> np.ndarray:
    """The model's own probabilities (every class) for ``paths``, after the chosen transform
    (``tta``: averaged over the 8 flips and rotations, as ``classify --tta``; ``stains``:
    the lab's, for ``macenko``)."""
    transform = look.make_transform(normalize, zoom, stains=stains)
    return clf.predict_proba(
        list(paths), batch_size=batch_size, progress=False, transform=transform, tta=tta
    )


def scaled(
    proba: Any,
    labels: Sequence[str],
    classes: Sequence[str] = CLASSES,
    *,
    allowed: Sequence[str] | None = None,
    temperature: float = 1.0,
) -> tuple[np.ndarray, np.ndarray]:
    """What the rejection rule sees: restricted, temperature-scaled probabilities; label indices.

    Labels are indices into ``allowed`` (or ``classes``); a label outside them is an error.
    """
    answers = list(allowed) if allowed is not None else list(classes)
    labels = pd.Series(list(labels), dtype=object)
    outside = sorted(set(labels) - set(answers))
    if outside:
        raise ValueError(
            f"labels {outside} are not among the classes answered ({', '.join(answers)}): "
            "restrict to classes that include every label"
        )
    shown = reject.restrict(proba, list(classes), allowed, temperature)
    return shown, labels.map({c: i for i, c in enumerate(answers)}).to_numpy()


def score(
    proba: Any,
    labels: Sequence[str],
    classes: Sequence[str] = CLASSES,
    *,
    allowed: Sequence[str] | None = None,
    temperature: float = 1.0,
    threshold: float | None = None,
) -> dict[str, Any]:
    """Accuracy and balanced accuracy of ``proba`` against ``labels``, as ``classify`` answers.

    ``allowed``: predictions restricted to these classes (``reject.restrict``), else all of
    ``classes``. Balanced accuracy is the mean recall over the classes present in
    ``labels``. With ``threshold`` (on the temperature-scaled, restricted probability):
    coverage and the accuracy of the answered cells. ``predicted`` holds the class names.
    """
    answers = list(allowed) if allowed is not None else list(classes)
    shown, y = scaled(proba, labels, classes, allowed=allowed, temperature=temperature)
    pred = shown.argmax(axis=1)
    correct = pred == y
    recalls = {answers[i]: float(correct[y == i].mean()) for i in np.unique(y)}
    out = {
        "n": int(len(y)),
        "accuracy": float(correct.mean()) if len(y) else None,
        "balanced_accuracy": float(np.mean(list(recalls.values()))) if recalls else None,
        "recall": recalls,
        "classes_allowed": None if allowed is None else answers,
        "predicted": [answers[i] for i in pred],
    }
    if threshold is not None:
        out.update(reject.accepted_metrics(shown, y, threshold))
    return out


def without_predictions(scored: Mapping[str, Any]) -> dict[str, Any]:
    """:func:`score`'s result without the per-cell list, for the JSON record."""
    return {k: v for k, v in scored.items() if k != "predicted"}


def predictions_instead(labels: Sequence[str], predicted: Sequence[str]) -> pd.DataFrame:
    """Counts of true class (rows, CLASSES order) against predicted class (columns, all classes)."""
    table = pd.crosstab(
        pd.Series(list(labels), name="true class"), pd.Series(list(predicted), name="predicted")
    )
    rows = [c for c in CLASSES if c in table.index]
    return table.reindex(index=rows, columns=list(CLASSES), fill_value=0)


# --- remedies ------------------------------------------------------------------------------


def remedy_row(remedy: str, cells: str, scored: Mapping[str, Any], **extra: Any) -> dict[str, Any]:
    """One row of the comparison table from :func:`score`'s result."""
    allowed = scored.get("classes_allowed")
    return {
        "remedy": remedy,
        "cells": cells,
        "classes": reject.ALL_CLASSES if allowed is None else f"{len(allowed)} present",
        "n": scored["n"],
        "accuracy": scored["accuracy"],
        "balanced_accuracy": scored["balanced_accuracy"],
        "coverage": scored.get("coverage", 1.0),
        **extra,
    }


def paired_remedy(
    proba_by: Mapping[str, Any],
    best: Mapping[str, Any] | None,
    base: Mapping[str, Any] | None,
    labels: Sequence[str],
    classes: Sequence[str],
    present: Sequence[str],
    *,
    n_boot: int = 1000,
    seed: int = DEFAULT_SEED,
) -> PairedComparison | None:
    """Remedy row ``best`` against row ``base`` on the same cells (``a`` = base, ``b`` = best),
    each answering the classes its row names; None when either row's probabilities are not in
    ``proba_by`` (remedy name -> the lab's probabilities)."""
    if best is None or base is None or not {best["remedy"], base["remedy"]} <= set(proba_by):
        return None
    truth = np.asarray(list(labels), dtype=object)

    def wrong(row: Mapping[str, Any]) -> np.ndarray:
        allowed = None if row["classes"] == reject.ALL_CLASSES else list(present)
        scored = score(proba_by[row["remedy"]], labels, classes, allowed=allowed)
        return (np.asarray(scored["predicted"], dtype=object) != truth).astype(int)

    # paired_comparison needs only which cells each got right: class 0 = right, 1 = wrong.
    right = np.zeros(len(truth), int)
    return paired_comparison(right, wrong(base), wrong(best), n_boot=n_boot, seed=seed)


def adapt_rows(
    summary: pd.DataFrame, present: Sequence[str], suffix: str = ""
) -> list[dict[str, Any]]:
    """Rows of the comparison table from :func:`adapt_summary`: one per number of shots,
    scored on the held-out cells among the classes ``present`` in the lab."""
    return [
        remedy_row(
            f"adapt, {s.shots} per class{suffix}",
            "other lab",
            {
                "n": int(round(s.n_held_out)),
                "accuracy": s.accuracy_present,
                "balanced_accuracy": s.balanced_accuracy_present,
                "classes_allowed": list(present),
            },
        )
        for s in summary.itertuples()
    ]


def coverage_curves(curves: Mapping[str, tuple[Any, Any]]) -> pd.DataFrame:
    """``reject.coverage_curve`` of each ``name -> (scaled proba, y)``, stacked (column ``cells``)."""
    parts = []
    for name, (proba, y) in curves.items():
        c = reject.coverage_curve(proba, y)
        c.insert(0, "cells", name)
        parts.append(c)
    return pd.concat(parts, ignore_index=True)


def robust_config(base_info: Mapping[str, Any], **changes: Any):
    """The base model's recipe (its sidecar's ``config``) with ``augment_domain=True``, whole frame.

    ``crop`` goes back to 1: other labs' cells fill most of their frame, and the augmentation
    zooms PBC's to match, so a centre crop would cut exactly the cells this model is for.
    Keys the sidecar holds but :class:`~bloodlib.train.recipe.FinetuneConfig` does not know
    (an older or newer bloodlib) are dropped rather than failing.
    """

    cfg = dict(base_info.get("config") or {})
    if not cfg:
        raise ValueError(
            f"{base_info.get('name', 'the model')}'s sidecar records no training config: the "
            "robust recipe retrains that recipe, so fine-tune the base model with notebook 03"
        )
    return replace(
        FinetuneConfig.from_sidecar(cfg),
        augment=True,
        augment_domain=True,
        crop=1.0,
        **changes,
    )


def train_robust(
    base_info: Mapping[str, Any],
    split: pd.DataFrame,
    run_dir: str | Path,
    *,
    verbose: int = 2,
    **changes: Any,
):
    """Fine-tune ``<backbone>_robust`` on the run's split with the base recipe + other-lab augmentation.

    ``finetune.train``'s naming and resume: a finished model with the same recipe and cells
    returns at once, an interrupted one resumes.
    """

    cfg = robust_config(base_info, **changes)
    train_df = split[split["split"] == "train"]
    val_df = split[split["split"] == "val"]
    return train(cfg, train_df, val_df, run_dir, robust_name(cfg.backbone), verbose=verbose)


def upsert_metrics(run_dir: str | Path, entry: Mapping[str, Any]) -> Path:
    """Add (or replace, by name) one model's entry in ``metrics.json``, keeping everything else."""

    path = Path(run_dir) / "metrics.json"
    data = results.read_metrics(run_dir) if path.is_file() else {"models": []}
    models = [m for m in data.get("models", []) if m.get("name") != entry["name"]]
    extra = {k: v for k, v in data.items() if k != "models"}
    return results.write_metrics(run_dir, [*models, dict(entry)], **extra)


#: Columns of :func:`adapt_curve`'s table (also when no number of shots was given).
CURVE_COLUMNS = (
    "shots",
    "repeat",
    "seed",
    "n_support",
    "n_held_out",
    "n_unlabelled",
    "classes_not_held_out",
    "before_accuracy_present",
    "accuracy_present",
    "balanced_accuracy_present",
    "accuracy_all",
    "seconds",
)


def adapt_curve(
    model_path: str | Path,
    folder: str | Path,
    shots: Sequence[int],
    *,
    repeats: int = 1,
    seed: int = DEFAULT_SEED,
    train: str | None = None,
    batch_size: int | None = None,
    epochs: int | None = None,
    steps: int | None = None,
    unlabelled: bool = False,
    work_dir: str | Path | None = None,
) -> pd.DataFrame:
    """``adapt.adapt`` for each number of cells per class, ``repeats`` times (seeds ``seed + r``).

    Each adapted model is scored on the cells *not* used to adapt it (``after``), beside the
    base model on the same cells (``before``); the adapted models are deleted afterwards
    (``work_dir``: where they are written meanwhile, a temporary folder by default).
    ``unlabelled``: also learn from the lab's other cells without their labels (``bloodlib
    adapt --unlabelled FOLDER`` on the labelled folder itself). The held-out cells are then
    among them: the score is transductive, as for a lab that adapts on the batch it classifies.
    Columns: :data:`CURVE_COLUMNS`.
    """

    if repeats < 1:
        raise ValueError(f"repeats is {repeats}: adapt at least once per number of shots")
    # None: adapt's own defaults, so the curve measures what `bloodlib adapt` does (its
    # batch size sets the number of steps on a few dozen cells, and with it the result).
    kwargs: dict[str, Any] = {} if train is None else {"train": train}
    if batch_size is not None:
        kwargs["batch_size"] = batch_size
    if epochs is not None:
        kwargs["epochs"] = epochs
    if steps is not None:  # a lighter adaptation than adapt's default (the classroom run)
        kwargs["steps"] = steps
    if unlabelled:
        kwargs["unlabelled"] = folder
    rows = []
    if work_dir is not None:
        Path(work_dir).mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=work_dir, prefix="adapt-") as tmp:
        for k in shots:
            for r in range(repeats):
                out = Path(tmp) / f"adapted_{k}_{r}.keras"
                res = adapt.adapt(model_path, folder, out, shots=int(k), seed=seed + r, **kwargs)
                held = set(res.held_out["label"]) if len(res.held_out) else set()
                after, before = res.after or {}, res.before or {}
                rows.append(
                    {
                        "shots": int(k),
                        "repeat": r,
                        "seed": seed + r,
                        "n_support": int(len(res.support)),
                        "n_held_out": int(len(res.held_out)),
                        "n_unlabelled": 0 if res.unlabelled is None else len(res.unlabelled),
                        "classes_not_held_out": ", ".join(
                            c for c in res.classes_present if c not in held
                        ),
                        "before_accuracy_present": before.get("accuracy_present"),
                        "accuracy_present": after.get("accuracy_present"),
                        "balanced_accuracy_present": after.get("balanced_accuracy_present"),
                        "accuracy_all": after.get("accuracy"),
                        "seconds": round(res.seconds, 1),
                    }
                )
                out.unlink(missing_ok=True)
                out.with_suffix(".json").unlink(missing_ok=True)
    return pd.DataFrame(rows, columns=CURVE_COLUMNS)


def adapt_summary(curve: pd.DataFrame) -> pd.DataFrame:
    """Mean (and min, max over repeats) held-out accuracy per number of shots."""
    g = curve.groupby("shots")
    return pd.DataFrame(
        {
            "repeats": g.size(),
            "n_held_out": g["n_held_out"].mean(),
            "n_unlabelled": g["n_unlabelled"].mean(),
            "before": g["before_accuracy_present"].mean(),
            "accuracy_present": g["accuracy_present"].mean(),
            "min": g["accuracy_present"].min(),
            "max": g["accuracy_present"].max(),
            "balanced_accuracy_present": g["balanced_accuracy_present"].mean(),
            "seconds": g["seconds"].mean(),
        }
    ).reset_index()


class Timer:
    """Wall seconds of named steps, for the record (``with timer("robust"): ...``)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self._name: str | None = None

    def __call__(self, name: str) -> Timer:
        self._name = name
        return self

    def __enter__(self) -> Timer:
        self._start = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._name is not None
        self.seconds[self._name] = round(time.perf_counter() - self._start, 1)


def save_results(run_dir: str | Path, results: Mapping[str, Any]) -> Path:
    """``run_dir/domain_shift.json``, written atomically."""
    return write_json(Path(run_dir) / "domain_shift.json", dict(results))


# --- sentences -----------------------------------------------------------------------------
