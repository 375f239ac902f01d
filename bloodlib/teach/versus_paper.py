"""How a run's recipe differs from the paper's: the table notebooks 02-04 show.

Only what the paper is known to state is compared (:mod:`bloodlib.core.paper`); every other
aspect of its recipe reads :data:`~bloodlib.core.paper.UNKNOWN` rather than a guess, so the
table never puts words in the authors' mouths.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from bloodlib.core import paper
from bloodlib.core.paper import UNKNOWN
from bloodlib.data.source import is_sample
from bloodlib.models.saved import read_sidecar

COLUMNS = ("aspect", "paper", "here", "why")

Row = tuple[str, str, str, str]


def _pct(x: float) -> str:
    return f"{100 * x:.3g} %"


def _backbone_list(names: Sequence[str]) -> str:
    return ", ".join(paper.BACKBONE_NAMES.get(b, b) for b in names)


def _data_rows(params: Mapping[str, Any]) -> list[Row]:
    data, n_images, fractions = (params.get(k) for k in ("data", "n_images", "split_fractions"))
    sample = is_sample(data)
    here = "the embedded sample" if sample else f"{data}"
    if n_images is not None:
        here += f", {int(n_images):,} usable images"
    d = paper.DATASET
    split = "/".join(f"{round(100 * float(f))}" for f in fractions or ()) + " train/val/test"
    return [
        (
            "data",
            f"PBC, {d['images']:,} images of {d['classes']} classes "
            f"({d['analyser']}, {d['stain']})",
            here,
            "a smoke test that runs in minutes on a laptop"
            if sample
            else "the data given to this run",
        ),
        (
            "split",
            UNKNOWN,
            (split if fractions else "split.csv of notebook 01")
            + ", stratified, copies kept in one split",
            "a validation split chooses models and fits the temperature; exact and near copies "
            "in one split keep test cells from having twins in training",
        ),
    ]


def _network_rows(key: str, params: Mapping[str, Any]) -> list[Row]:
    backbones = list(params.get("backbones") or [])
    theirs = list(paper.BACKBONES)
    image_size = params.get("image_size")
    native = all(paper.BACKBONES.get(b) == image_size for b in backbones) if image_size else True
    if native:
        why_size = "the networks' native sizes"
    elif key == "svm":
        why_size = "larger inputs keep more of a cell's texture for frozen features"
    else:
        why_size = "smaller inputs train faster on a CPU"
    return [
        (
            "backbone",
            _backbone_list(theirs) + " (ImageNet weights)",
            _backbone_list(backbones) or "none",
            "same as the paper"
            if sorted(backbones) == sorted(theirs)
            else "EfficientNet-Lite0 is small and fast on a CPU and its weights ship offline; "
            "the `paper` profile runs VGG-16 and InceptionV3",
        ),
        (
            "input size",
            ", ".join(f"{v} px ({paper.BACKBONE_NAMES[k]})" for k, v in paper.BACKBONES.items()),
            f"{int(image_size)} px for every backbone"
            if image_size
            else "each backbone's native size",
            why_size,
        ),
    ]


def _svm_rows(params: Mapping[str, Any]) -> list[Row]:
    cv = params.get("svm_cv")
    return [
        (
            "classifier",
            "SVM on the features; kernel and C " + UNKNOWN,
            "SVM, kernel and C chosen by "
            + (f"{int(cv)}-fold " if cv else "")
            + "cross-validation on the training split",
            "the best C depends on the features; choosing it on training data only keeps "
            "the test score honest",
        ),
        (
            "feature scaling",
            UNKNOWN,
            "signed square root, then standardisation",
            "tames the few large activations of pooled CNN features; an SVM needs "
            "features on comparable scales",
        ),
        (
            "probabilities",
            UNKNOWN,
            "Platt scaling (sigmoid calibration) on out-of-fold decisions",
            "notebook 04 needs probabilities for ROC curves and calibration",
        ),
    ]


def _schedule_rows(params: Mapping[str, Any]) -> list[Row]:
    eh, ef, block = (
        params.get(k) for k in ("epochs_head", "epochs_finetune", "unfreeze_from_block")
    )
    rows: list[Row] = [
        (
            "schedule",
            UNKNOWN,
            f"{eh} epochs head only, then {ef} epochs fine-tuning"
            if eh is not None and ef is not None
            else "head, then fine-tuning",
            "a fitted head before unfreezing keeps large random gradients out of the "
            "pre-trained weights",
        ),
        (
            "unfrozen layers",
            UNKNOWN,
            f"from block {block} on" if block is not None else "all",
            "early blocks detect edges and colours that transfer as they are; freezing them "
            "saves time",
        ),
    ]
    crop = params.get("crop")
    if crop is not None and crop < 1:
        rows.append(
            (
                "field of view",
                "the whole image",
                f"the centre {crop:.0%} of each side ({crop * crop:.0%} of the pixels)",
                "PBC's analyser puts the cell in the middle; the network's cost grows "
                "with the pixels it sees, and the cell keeps its resolution",
            )
        )
    return rows


def _training_rows(params: Mapping[str, Any]) -> list[Row]:
    cap = params.get("max_train_images")
    return [
        (
            "label smoothing",
            UNKNOWN,
            f"{params.get('label_smoothing')}",
            "softer targets reduce over-confidence; notebook 04 measures the effect",
        ),
        (
            "augmentation",
            UNKNOWN,
            "flips, 90° rotations, slight brightness and saturation"
            if params.get("augment")
            else "none",
            "a cell has no up or down: flips and rotations are free extra data",
        ),
        (
            "training images",
            UNKNOWN,
            "all of the training split" if not cap else f"at most {int(cap)}",
            "a cap keeps a classroom run within minutes on a CPU",
        ),
    ]


def _accuracy_row(key: str) -> Row:
    reported = [
        f"{paper.BACKBONE_NAMES[b]} {_pct(paper.ACCURACY[(b, key)])}"
        for b in paper.BACKBONES
        if (b, key) in paper.ACCURACY
    ]
    return (
        "reported test accuracy",
        ", ".join(reported),
        "computed below and in notebook 04",
        "the same metric on a different split and data size: compare with care",
    )


def differences(design: str, params: Mapping[str, Any]) -> pd.DataFrame:
    """One row per aspect of the recipe: what the paper did, what this notebook does, and why.

    ``params`` are the notebook's parameters (its ``parameters`` cell); optional extra keys
    ``n_images`` (images in the split) and ``split_fractions`` make the data rows concrete.
    """
    key = paper.design_key(design)
    if key == "svm":
        recipe = _svm_rows(params)
    else:
        recipe = _schedule_rows(params) + _training_rows(params)
    rows = _data_rows(params) + _network_rows(key, params) + recipe + [_accuracy_row(key)]
    return pd.DataFrame(rows, columns=list(COLUMNS))


def recipe_differences(
    run_dir: str | Path, results: Sequence[Any], data: Any, **extra: Any
) -> pd.DataFrame:
    """:func:`differences` of every model scored (``evaluate.results.Evaluation`` objects),
    from the parameters in its sidecar.

    One block of rows per model (column ``model``); ``extra`` (e.g. ``split_fractions``)
    goes to every block.
    """
    tables = []
    seen: set[str] = set()
    for r in results:
        path = r.metrics["model_path"]
        if path in seen:
            continue  # a TTA entry shares its network's recipe
        seen.add(path)
        info = read_sidecar(Path(run_dir) / path)
        config = info.get("config")
        if config is None and info.get("ensemble"):  # its members' recipe (seeds aside)
            config = info["ensemble"]["members"][0].get("config")
        params: dict[str, Any] = {**(config or {}), **extra}
        params.update(data=data, backbones=[info["backbone"]], image_size=info["image_size"])
        table = differences(info["method"], params)
        table.insert(0, "model", info["name"])
        tables.append(table)
    return pd.concat(tables, ignore_index=True) if tables else pd.DataFrame()
