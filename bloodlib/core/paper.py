"""The recipe of Acevedo et al. 2019, as constants, and how a notebook's parameters differ from it.

Only what the paper and the dataset paper are known to state is written down; every other
aspect of the recipe is :data:`UNKNOWN` rather than guessed, so a differences table never
puts words in the authors' mouths. Notebooks 02-04 show :func:`differences`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd

CITATION = (
    "Acevedo A, Alférez S, Merino A, Puigví L, Rodellar J. Recognition of peripheral blood "
    "cell images using convolutional neural networks. Comput Methods Programs Biomed. "
    "2019;180:105020. doi:10.1016/j.cmpb.2019.105020"
)
DATASET_CITATION = (
    "Acevedo A, Merino A, Alférez S, Molina Á, Boldú L, Rodellar J. A dataset of microscopic "
    "peripheral blood cell images for development of automatic recognition systems. "
    "Data in Brief. 2020;30:105474. doi:10.1016/j.dib.2020.105474"
)

#: What the table says where bloodlib has not checked what the paper did.
UNKNOWN = "not checked here (see the paper)"

#: The dataset as the Data in Brief paper describes it.
DATASET = {
    "images": 17_092,
    "classes": 8,
    "image_size_px": (360, 363),
    "analyser": "CellaVision DM96",
    "stain": "May-Grünwald-Giemsa",
    "source": "Core Laboratory, Hospital Clinic of Barcelona",
}

#: The two backbones of the paper (ImageNet weights) and their native input sizes in pixels.
BACKBONES: dict[str, int] = {"vgg16": 224, "inception_v3": 299}
#: Display names of backbones in the tables (registry name -> name in print).
BACKBONE_NAMES: dict[str, str] = {
    "vgg16": "VGG-16",
    "inception_v3": "InceptionV3",
    "efficientnet_lite0": "EfficientNet-Lite0",
}

#: Design 1 (frozen ImageNet features + SVM) and design 2 (fine-tuned network).
DESIGNS: dict[str, str] = {
    "svm": "design 1: ImageNet features of a frozen network, classified by an SVM",
    "finetune": "design 2: the network fine-tuned end to end",
}

#: Test accuracies the paper reports, by (backbone, design).
ACCURACY: dict[tuple[str, str], float] = {
    ("vgg16", "svm"): 0.86,
    ("inception_v3", "svm"): 0.90,
    ("vgg16", "finetune"): 0.962,
    ("inception_v3", "finetune"): 0.95,
}

_ALIASES = {"1": "svm", "design1": "svm", "features": "svm", "2": "finetune", "design2": "finetune"}

COLUMNS = ("aspect", "paper", "here", "why")


def design_key(design: str) -> str:
    """``"svm"`` or ``"finetune"`` for a design name (``"1"``, ``"design2"``, ``"svm"``, ...)."""
    key = str(design).strip().lower().replace(" ", "").replace("_", "")
    key = _ALIASES.get(key, key)
    if key not in DESIGNS:
        raise ValueError(f"design must be one of {sorted(DESIGNS)} (or 1 / 2), not {design!r}")
    return key


def _pct(x: float) -> str:
    return f"{100 * x:.3g} %"


def _backbone_list(names: Sequence[str]) -> str:
    return ", ".join(BACKBONE_NAMES.get(b, b) for b in names)


def _sizes_here(backbones: Sequence[str], image_size: Any) -> str:
    if image_size:
        return f"{int(image_size)} px for every backbone"
    return "each backbone's native size"


def _fractions(fractions: Any) -> str:
    return "/".join(f"{round(100 * float(f))}" for f in fractions) + " train/val/test"


def _is_sample(data: Any) -> bool:
    return data is None or (isinstance(data, str) and data.strip().lower() == "sample")


def differences(design: str, params: Mapping[str, Any]) -> pd.DataFrame:
    """One row per aspect of the recipe: what the paper did, what this notebook does, and why.

    ``params`` are the notebook's parameters (its ``parameters`` cell); optional extra keys
    ``n_images`` (images in the split) and ``split_fractions`` make the data rows concrete.
    Unknown parts of the paper's recipe read :data:`UNKNOWN`.
    """
    key = design_key(design)
    rows: list[tuple[str, str, str, str]] = []
    data = params.get("data")
    n_images = params.get("n_images")
    here_data = "the embedded sample" if _is_sample(data) else f"{data}"
    if n_images is not None:
        here_data += f", {int(n_images):,} usable images"
    rows.append(
        (
            "data",
            f"PBC, {DATASET['images']:,} images of {DATASET['classes']} classes "
            f"({DATASET['analyser']}, {DATASET['stain']})",
            here_data,
            "a smoke test that runs in minutes on a laptop"
            if _is_sample(data)
            else "the data given to this run",
        )
    )
    fractions = params.get("split_fractions")
    rows.append(
        (
            "split",
            UNKNOWN,
            (_fractions(fractions) if fractions else "split.csv of notebook 01")
            + ", stratified, copies kept in one split",
            "a validation split chooses models and fits the temperature; exact and near copies "
            "in one split keep test cells from having twins in training",
        )
    )
    backbones = list(params.get("backbones") or [])
    paper_backbones = list(BACKBONES)
    rows.append(
        (
            "backbone",
            _backbone_list(paper_backbones) + " (ImageNet weights)",
            _backbone_list(backbones) or "none",
            "same as the paper"
            if sorted(backbones) == sorted(paper_backbones)
            else "EfficientNet-Lite0 is small and fast on a CPU and its weights ship offline; "
            "the `paper` profile runs VGG-16 and InceptionV3",
        )
    )
    image_size = params.get("image_size")
    native = all(BACKBONES.get(b) == image_size for b in backbones) if image_size else True
    rows.append(
        (
            "input size",
            ", ".join(f"{v} px ({BACKBONE_NAMES[k]})" for k, v in BACKBONES.items()),
            _sizes_here(backbones, image_size),
            "the networks' native sizes"
            if native
            else (
                "larger inputs keep more of a cell's texture for frozen features"
                if key == "svm"
                else "smaller inputs train faster on a CPU"
            ),
        )
    )
    if key == "svm":
        cv = params.get("svm_cv")
        rows += [
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
    else:
        eh, ef = params.get("epochs_head"), params.get("epochs_finetune")
        rows += [
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
                f"from block {params.get('unfreeze_from_block')} on"
                if params.get("unfreeze_from_block") is not None
                else "all",
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
        rows += [
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
                "all of the training split"
                if not params.get("max_train_images")
                else f"at most {int(params['max_train_images'])}",
                "a cap keeps a classroom run within minutes on a CPU",
            ),
        ]
    accuracies = [
        f"{BACKBONE_NAMES[b]} {_pct(ACCURACY[(b, key)])}" for b in BACKBONES if (b, key) in ACCURACY
    ]
    rows.append(
        (
            "reported test accuracy",
            ", ".join(accuracies),
            "computed below and in notebook 04",
            "the same metric on a different split and data size: compare with care",
        )
    )
    return pd.DataFrame(rows, columns=list(COLUMNS))
