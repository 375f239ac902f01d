"""Results put into words: every sentence a notebook states about a number, computed from it.

A sentence typed beside an output can contradict it once the data changes; these functions
compute the claim from the output itself and return Markdown, which notebooks display with
``display(Markdown(...))``. One module per notebook: :mod:`~bloodlib.teach.narrative.data`
(01), :mod:`~bloodlib.teach.narrative.features` (02), :mod:`~bloodlib.teach.narrative.evaluation`
(04), :mod:`~bloodlib.teach.narrative.lab` (05), over :mod:`~bloodlib.teach.narrative.words`.
The names are re-exported here: a notebook writes ``narrative.interval_sentence(...)``.
"""

from bloodlib.teach.narrative.data import (
    brightness_extremes,
    class_balance,
    image_sizes,
    leaked_test_images,
    quality_summary,
    split_summary,
)
from bloodlib.teach.narrative.evaluation import (
    calibration_sentence,
    calibration_summary,
    interval_sentence,
    paired_lead_sentence,
    ranking_sentence,
    rejection_sentence,
    saliency_sentence,
    seed_mistakes_sentence,
    seed_sentence,
    seed_sentences,
    tta_sentence,
)
from bloodlib.teach.narrative.features import (
    backbone_sentence,
    confusion_sentence,
    cv_sentence,
    explained_variance,
    feature_shape,
    most_confused,
    per_class_extremes,
    svm_seed_sentence,
)
from bloodlib.teach.narrative.lab import (
    adapt_sentence,
    best_remedy,
    entropy_sentence,
    lab_sentence,
    remedies_sentence,
    robust_sentence,
    shift_sentence,
    unlabelled_sentence,
    zero_shot_sentence,
)
from bloodlib.teach.narrative.words import (
    and_list,
    few_names,
    pct,
    points,
)

__all__ = [
    "adapt_sentence",
    "and_list",
    "backbone_sentence",
    "brightness_extremes",
    "calibration_sentence",
    "calibration_summary",
    "class_balance",
    "confusion_sentence",
    "cv_sentence",
    "entropy_sentence",
    "explained_variance",
    "feature_shape",
    "few_names",
    "image_sizes",
    "interval_sentence",
    "lab_sentence",
    "leaked_test_images",
    "most_confused",
    "pct",
    "per_class_extremes",
    "points",
    "quality_summary",
    "paired_lead_sentence",
    "ranking_sentence",
    "rejection_sentence",
    "saliency_sentence",
    "best_remedy",
    "remedies_sentence",
    "robust_sentence",
    "seed_mistakes_sentence",
    "seed_sentence",
    "seed_sentences",
    "shift_sentence",
    "split_summary",
    "svm_seed_sentence",
    "tta_sentence",
    "unlabelled_sentence",
    "zero_shot_sentence",
]
