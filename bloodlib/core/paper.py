"""The facts of Acevedo et al. 2019 and of the PBC dataset paper, as constants.

Only what the two papers are known to state is written down; every other aspect of the
recipe is :data:`UNKNOWN` rather than guessed. ``bloodlib.teach.versus_paper`` builds from these
the table of how a run's recipe differs from the paper's.
"""

from __future__ import annotations

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


def design_key(design: str) -> str:
    """``"svm"`` or ``"finetune"`` for a design name (``"1"``, ``"design2"``, ``"svm"``, ...)."""
    key = str(design).strip().lower().replace(" ", "").replace("_", "")
    key = _ALIASES.get(key, key)
    if key not in DESIGNS:
        raise ValueError(f"design must be one of {sorted(DESIGNS)} (or 1 / 2), not {design!r}")
    return key
