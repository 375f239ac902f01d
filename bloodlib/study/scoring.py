"""Score a run's saved models on its test split (notebook 04).

One :class:`Evaluation` per model (and per model with test-time augmentation), the
``metrics.json`` the runner and the README read, and the comparisons notebook 04 explains:
the paired TTA gain with its uncertainty, and calibration put into words. Every sentence a
notebook states about these results is built here from the numbers, never typed by hand.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from bloodlib import CLASSES
from bloodlib.core import paper
from bloodlib.core.config import DEFAULT_SEED, ROBUST_SUFFIX, split_seed_name, training_seeds
from bloodlib.core.errors import BloodlibError
from bloodlib.data.split import overlap
from bloodlib.evaluate import calibration, reject
from bloodlib.evaluate import metrics as ev
from bloodlib.evaluate.results import Evaluation, label_indices
from bloodlib.models.saved import MODEL_SUFFIXES, model_seed, update_sidecar
from bloodlib.predict.engine import load_classifier


def saved_models(run_dir: str | Path) -> list[Path]:
    """Model files of a run (``models/*`` with a sidecar), in name order."""
    folder = Path(run_dir) / "models"
    return sorted(
        p
        for p in folder.glob("*")
        if p.suffix in MODEL_SUFFIXES and p.with_suffix(".json").is_file()
    )


def study_models(run_dir: str | Path) -> list[Path]:
    """The models notebook 04 scores: notebooks 02 and 03's, without notebook 05's robust
    network (scored by notebook 05 itself), so that notebook 04 reports the same models
    whether or not notebook 05 has run in this folder before."""

    return [
        p for p in saved_models(run_dir) if not split_seed_name(p.stem)[0].endswith(ROBUST_SUFFIX)
    ]


def evaluate_model(
    model_path: str | Path,
    split: pd.DataFrame,
    *,
    n_boot: int = 1000,
    seed: int = DEFAULT_SEED,
    progress: bool = False,
    tta: bool = False,
    classifier: Any = None,
) -> Evaluation:
    """Score one saved model on the test split, with temperature scaling fitted on validation.

    With ``tta`` the probabilities are averaged over the 8 flips and rotations of each cell
    and the entry is named ``<name>_tta``. ECE uses :func:`bloodlib.evaluate.calibration.calibration_bins`
    bins for the test set's size (``ece_bins`` in the entry).
    """

    model_path = Path(model_path)
    clf = classifier or load_classifier(model_path)
    check_fresh(clf, split[split["split"] == "test"])  # before any prediction
    probs = {}
    for part in ("val", "test"):
        rows = split[split["split"] == part]
        if len(rows):
            probs[part] = clf.predict_proba(
                rows["path"].tolist(), hashes=rows["sha256"].tolist(), progress=progress, tta=tta
            )
    if "test" not in probs:
        raise ValueError("the split has no test rows: run notebook 01 to make the split")
    test = split[split["split"] == "test"].reset_index(drop=True)
    seen = check_fresh(clf, test)
    y_test = label_indices(test["label"])
    p_test = probs["test"]
    metrics = ev.evaluate(y_test, p_test, list(CLASSES), n_boot=n_boot, seed=seed)
    n_bins = calibration.calibration_bins(len(test))
    temperature = 1.0
    p_scaled = p_test
    n_val = int((split["split"] == "val").sum())
    y_val = None
    if "val" in probs:
        y_val = label_indices(split[split["split"] == "val"]["label"])
        temperature = calibration.fit_temperature(
            calibration.logits_from_proba(probs["val"]), y_val
        )
        p_scaled = calibration.softmax(calibration.logits_from_proba(p_test), temperature)
    info = clf.info
    entry = {
        "name": info["name"] + ("_tta" if tta else ""),
        "backbone": info["backbone"],
        "method": info["method"],
        "image_size": info["image_size"],
        "tta": tta,
        "seed": model_seed(info),
        "engine": clf.engine,
        "test_accuracy": metrics["accuracy"],
        "balanced_accuracy": metrics["balanced_accuracy"],
        "accuracy_ci95": metrics["accuracy_ci95"],
        "balanced_accuracy_ci95": metrics["balanced_accuracy_ci95"],
        "n_boot": n_boot,
        "macro_f1": metrics["macro_f1"],
        "macro_auc": metrics["macro_auc"],
        "per_class": metrics["per_class"],
        "confusion": metrics["confusion"],
        "ece": calibration.expected_calibration_error(y_test, p_test, n_bins),
        "ece_bins": n_bins,
        "temperature": temperature,
        "ece_after_scaling": calibration.expected_calibration_error(y_test, p_scaled, n_bins),
        "n_test": int(len(test)),
        "n_val": n_val,
        # None: the model records no training cells (saved before bloodlib kept them).
        "test_cells_seen_in_training": seen,
        "model_path": model_path.relative_to(model_path.parents[1]).as_posix(),
        "paper_accuracy": paper.ACCURACY.get((info["backbone"], info["method"])),
    }
    if info.get("ensemble"):  # bloodlib.models.ensemble: the networks it averages, by name
        entry["ensemble"] = [m["name"] for m in info["ensemble"]["members"]]
    return Evaluation(
        entry, test, y_test, p_test, p_scaled, p_test.argmax(axis=1), probs.get("val"), y_val
    )


class StaleModelError(BloodlibError):
    """A model scored on test cells it was trained (or validated) on."""


def check_fresh(clf: Any, test: pd.DataFrame) -> int | None:
    """Refuse a model whose training or validation cells include test cells of this split.

    It happens when notebook 01 made a new split (another seed, other fractions) and the
    models of notebooks 02 and 03 are still the old split's: their score would be measured
    partly on cells they learnt from. Returns 0, or None when the model records no
    training cells (``split.trained_on``: models saved before bloodlib kept them).
    """
    seen = overlap(clf.info.get("trained_on"), test["sha256"])
    if seen:
        raise StaleModelError(
            f"{clf.path.name} was trained on another split: {seen} of the {len(test)} test "
            "cells of this run's split.csv were among its training or validation cells, so its "
            "score would be measured on cells it learnt from. Re-run notebooks 02 and 03 on "
            "this split (python -m bloodlib run resumes what is unchanged), or delete the model"
        )
    return seen


def seed_models(
    model_paths: Sequence[Path], seed: int = DEFAULT_SEED, n_seeds: int = 1
) -> tuple[list[Path], list[Path]]:
    """``(first, others)``: the first seed's models (names without a seed) and those of this
    run's later training seeds (:func:`bloodlib.core.config.seed_model_name`), in path order.

    A ``_seed<N>`` model of a seed outside ``seed .. seed + n_seeds - 1`` (left by an earlier
    run with more seeds) is in neither list, so it cannot leak into this run's spread.
    """

    later = set(training_seeds(seed, n_seeds)[1:])
    first, others = [], []
    for path in model_paths:
        _, s = split_seed_name(Path(path).stem)
        if s is None:
            first.append(Path(path))
        elif s in later:
            others.append(Path(path))
    return first, others


def evaluate_models(
    model_paths: Sequence[Path],
    split: pd.DataFrame,
    *,
    tta: bool = True,
    **kwargs: Any,
) -> list[Evaluation]:
    """:func:`evaluate_model` for every model; fine-tuned networks also with ``tta`` when asked."""

    results = []
    for path in model_paths:
        clf = load_classifier(path)
        results.append(evaluate_model(path, split, classifier=clf, **kwargs))
        if tta and clf.info["method"] == "finetune":
            results.append(evaluate_model(path, split, classifier=clf, tta=True, **kwargs))
    return results


# ----------------------------------------------------------------------------- paired comparison


# ----------------------------------------------------------------------------- sentences


def record_rejection(
    run_dir: str | Path, result: Evaluation, target_accuracy: float | None = None
) -> dict[str, Any]:
    """Write the fitted temperature and a rejection threshold into the model's sidecar.

    The threshold is chosen on the validation cells only (:func:`bloodlib.evaluate.reject.choose_threshold`
    on the temperature-scaled probabilities): the smallest maximum probability whose accepted
    validation cells reach ``target_accuracy``. ``classify`` then marks cells below it
    ``uncertain`` by default. A threshold that answers fewer than ``reject.MIN_COVERAGE`` of
    the validation cells is unusable: none is written (``unusable_threshold`` says which it
    was). Returns what was recorded and what the rule does on the validation and test cells
    (coverage, accuracy of the accepted ones), for the notebook's sentence.
    """

    if result.metrics.get("tta"):
        raise ValueError("record the plain model's temperature, not the TTA entry's")
    if result.proba_val is None or result.y_val is None:
        raise ValueError(f"{result.name}: no validation cells to choose a threshold on")
    target = reject.TARGET_ACCURACY if target_accuracy is None else target_accuracy
    t = float(result.metrics["temperature"])
    val = reject.scale(result.proba_val, t)
    # The threshold the target asks for, however few cells it answers; kept only when it
    # answers enough of them to be a rule (reject.MIN_COVERAGE).
    asked = reject.choose_threshold(val, result.y_val, target_accuracy=target, min_coverage=0.0)
    val_coverage = reject.accepted_metrics(val, result.y_val, asked)["coverage"]
    threshold = asked if asked is None or val_coverage >= reject.MIN_COVERAGE else None
    update_sidecar(
        Path(run_dir) / result.metrics["model_path"], temperature=t, reject_threshold=threshold
    )
    on_test = reject.accepted_metrics(result.proba_scaled, result.y_true, threshold)
    return {
        "name": result.name,
        "temperature": t,
        "reject_threshold": threshold,
        "target_accuracy": target,
        "val_coverage": val_coverage if asked is not None else None,
        "unusable_threshold": asked if asked is not None and threshold is None else None,
        "min_coverage": reject.MIN_COVERAGE,
        **{f"test_{k}": v for k, v in on_test.items()},
    }


# ----------------------------------------------------------------------------- seeds
