"""bloodlib.teach.narrative: sentences computed from results agree with the results."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from bloodlib import CLASSES
from bloodlib.teach import narrative, plots

pytestmark = pytest.mark.unit


def test_balanced_classes_are_not_called_dominated():
    text = narrative.class_balance({"basophil": 31, "eosinophil": 30, "ig": 30})
    assert text.startswith("The classes are nearly balanced")
    assert "from 30 (eosinophil and ig) to 31 (basophil)" in text
    assert "dominate" not in text


def test_imbalanced_classes_name_the_largest():
    text = narrative.class_balance({"neutrophil": 300, "eosinophil": 100, "basophil": 50})
    assert text.startswith("The classes are imbalanced")
    assert "to 300 (neutrophil)" in text and "6.00 times" in text
    assert "66.7 %" in text  # 300 of 450


def test_exactly_balanced():
    assert "exactly balanced: 5 usable images each" in narrative.class_balance({"a": 5, "b": 5})


def test_quality_summary_counts_reasons():
    text = narrative.quality_summary(10, {"ok": 7, "duplicate": 2, "hidden": 1})
    assert text == "Of 10 files, 7 are usable and 3 are excluded (2 duplicate and 1 hidden)."
    assert "no defect" in narrative.quality_summary(3, {"ok": 3})


def test_split_summary_and_leaks():
    split = pd.DataFrame(
        {
            "split": ["train", "train", "val", "test", "test"],
            "group": ["a", "a", "b", "c", "d"],
        }
    )
    text = narrative.split_summary(split)
    assert (
        "train 2 (40.0 %)" in text
        and "each of the 1 group of near copies sits in one split" in text
    )
    assert narrative.leaked_test_images(split) == 0
    leaky = split.assign(group=["a", "c", "b", "c", "d"])
    assert narrative.leaked_test_images(leaky) == 1
    assert "1 groups of copies span two splits" in narrative.split_summary(leaky)


def test_most_confused_reads_the_matrix_not_a_guess():
    classes = ["basophil", "ig", "monocyte", "neutrophil"]
    m = np.array([[5, 0, 0, 0], [2, 3, 1, 0], [0, 0, 6, 0], [0, 1, 0, 5]])
    top = narrative.most_confused(m, classes, k=2)
    # ig->monocyte and neutrophil->ig tie (1 of 6 each): the earlier true class comes first
    assert top[["true", "predicted", "count"]].values.tolist() == [
        ["ig", "basophil", 2],
        ["ig", "monocyte", 1],
    ]
    text = narrative.confusion_sentence(m, classes, k=1)
    assert "4 of 23 test cells are misclassified" in text
    assert "**ig → basophil** (2 of 6 ig cells)" in text
    assert "misclassified" not in narrative.confusion_sentence(np.eye(3, dtype=int) * 4, "abc")


def test_per_class_extremes():
    table = pd.DataFrame({"sensitivity": [1.0, 0.5, 1.0]}, index=["a", "b", "c"])
    assert narrative.per_class_extremes(table) == (
        "Highest sensitivity: a and c (100.0 %); lowest: b (50.0 %)."
    )


def test_projection_and_its_sentence():
    rng = np.random.default_rng(0)
    X = np.concatenate([rng.normal(0, 1, (20, 5)), rng.normal(6, 1, (20, 5))])
    p = plots.project(X, "pca", seed=0)
    assert p.coords.shape == (40, 2)
    assert p.explained[0] > 0.5  # the two blobs differ along one direction
    assert "of the variance" in narrative.explained_variance(p.explained)
    fig = plots.plot_projection(p, [CLASSES[0]] * 20 + [CLASSES[1]] * 20, "test")
    assert len(fig.axes[0].collections) == 2
    with pytest.raises(ValueError, match="pca"):
        plots.project(X, "umap")


def test_image_sizes_and_brightness():
    table = pd.DataFrame(
        {
            "status": ["ok", "ok", "ok", "duplicate"],
            "width": [360, 360, 361, 999],
            "height": [363, 363, 364, 999],
            "label": ["a", "a", "b", "b"],
            "brightness": [200.0, 190.0, 150.0, 255.0],
        }
    )
    assert narrative.image_sizes(table) == (
        "2 of 3 usable images are 360 × 363 px; the other 1 has 1 other size, "
        "all within a few pixels of it."
    )
    assert narrative.image_sizes(table.iloc[:2]) == "All 2 usable images are 360 × 363 px."
    text = narrative.brightness_extremes(table)
    assert "darkest images are b (150.0 of 255)" in text and "brightest a (195.0)" in text


def test_cv_sentence_reads_the_ranked_table():
    table = pd.DataFrame(
        {
            "kernel": ["linear", "rbf"],
            "C": [0.003, 10.0],
            "gamma": [np.nan, "scale"],
            "cv_accuracy": [0.80, 0.79],
            "cv_std": [0.02, 0.03],
        }
    )
    text = narrative.cv_sentence(table, folds=3)
    assert text.startswith("Cross-validation chose the **linear kernel, C = 0.003**")
    assert "80.0 % over 3 folds" in text
    assert "(rbf kernel, C = 10, gamma = scale) is 1.0 points behind" in text
    assert "coin toss" in text
    clear = table.assign(cv_accuracy=[0.9, 0.7])
    assert "coin toss" not in narrative.cv_sentence(clear, folds=3)


def test_cv_sentence_counts_ties_with_the_chosen_setting():
    table = pd.DataFrame(
        {
            "kernel": ["linear", "linear", "rbf"],
            "C": [0.01, 0.003, 1.0],
            "gamma": [np.nan, np.nan, "scale"],
            "cv_accuracy": [0.85, 0.85, 0.8],
            "cv_std": [0.01, 0.02, 0.01],
            "chosen": [False, True, False],
        }
    )
    text = narrative.cv_sentence(table, folds=3)
    assert text.startswith("Cross-validation chose the **linear kernel, C = 0.003**")
    assert "1 other setting is within 0.1 points of it (linear kernel, C = 0.01)" in text
    near = table.assign(cv_accuracy=[0.8500004, 0.85, 0.8])
    assert "1 other setting is within 0.1 points" in narrative.cv_sentence(near, folds=3)


def test_many_tied_classes_are_counted_not_listed():
    counts = {c: 125 for c in CLASSES[1:]} | {"basophil": 126}
    text = narrative.class_balance(counts)
    assert "from 125 (7 classes) to 126 (basophil)" in text


def test_saliency_sentence_says_which_check_failed():
    check = {
        "rank_correlation": np.array([0.1, 0.2]),
        "mean_rank_correlation": 0.15,
        "layers": ["head"],
    }
    deletion = {
        "faster_than_random": 0.75,
        "mean_auc_salient": 0.2,
        "mean_auc_random": 0.4,
        "p_value": 0.01,
    }
    good = narrative.saliency_sentence(check, deletion)
    assert "depend on the trained weights" in good and "pixels the network needs" in good
    assert "0.15" in good and "75%" in good.replace(" %", "%")
    bad = narrative.saliency_sentence(
        {**check, "mean_rank_correlation": 0.9}, {**deletion, "p_value": 0.3}
    )
    assert "barely depend" in bad and "better than chance" in bad
