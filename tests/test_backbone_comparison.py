"""Design 1 across backbones: the comparison table, its sentence, its figure, its profile."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pytest

from bloodlib.core import paper
from bloodlib.models import backbones
from bloodlib.study import profiles
from bloodlib.study.profiles import load_profiles
from bloodlib.teach import narrative, plots
from bloodlib.train import design1

pytestmark = pytest.mark.unit


def _confusion(n_right: int, n_wrong: int, k: int = 8) -> list[list[int]]:
    """A k-class confusion matrix with ``n_right`` on the diagonal and ``n_wrong`` off it."""
    cm = np.zeros((k, k), dtype=int)
    for i in range(n_right):
        cm[i % k, i % k] += 1
    for i in range(n_wrong):
        cm[i % k, (i + 1) % k] += 1
    return cm.tolist()


def _result(
    backbone: str, size: int, n_right: int, ci=None, *, shuffle: int | None = None, cells=True
) -> design1.SVMExperiment:
    """200 test cells, ``n_right`` of them right: the first ones, or (``shuffle``: a seed)
    a random set of them, so that two results differ on many cells both ways."""
    n = 200
    y = np.arange(n) % 8
    right = np.arange(n) < n_right
    if shuffle is not None:
        right = np.random.default_rng(shuffle).permutation(right)
    return design1.SVMExperiment(
        name=f"{backbone}_svm",
        backbone=backbone,
        image_size=size,
        feature_dim=backbones.get(backbone).feature_dim,
        features_from_cache=True,
        best_params={},
        cv_accuracy=0.8,
        cv_table=None,  # type: ignore[arg-type]  # not read by the comparison
        scores={
            "val": {"accuracy": 0.85},
            "test": {
                "accuracy": n_right / n,
                "accuracy_ci95": ci,
                "confusion": _confusion(n_right, n - n_right),
            },
        },
        model_path=Path("unused"),
        test_labels=y if cells else None,
        test_predictions=np.where(right, y, (y + 1) % 8) if cells else None,
        test_cells=tuple(f"cell{i}" for i in range(n)) if cells else None,
    )


def test_gmacs_scale_with_the_pixel_count():
    lite0 = backbones.get("efficientnet_lite0")
    assert design1.gmacs_at("efficientnet_lite0", lite0.input_size) == pytest.approx(lite0.gmacs)
    assert design1.gmacs_at("efficientnet_lite0", 2 * lite0.input_size) == pytest.approx(
        4 * lite0.gmacs
    )


def test_table_rows_sorted_with_intervals_from_the_confusion_matrix():
    results = {
        "efficientnet_lite0": _result("efficientnet_lite0", 288, 170),
        "efficientnet_lite2": _result("efficientnet_lite2", 260, 180),
        "mobilenet_v2": _result("mobilenet_v2", 224, 150, ci=[0.7, 0.8]),
    }
    table = design1.backbone_table(results, images_per_s={"mobilenet_v2": 40.0}, seed=3)
    assert list(table.columns) == list(design1.BACKBONE_COLUMNS)
    assert list(table["backbone"]) == ["efficientnet_lite2", "efficientnet_lite0", "mobilenet_v2"]
    lite0 = table.set_index("backbone").loc["efficientnet_lite0"]
    assert lite0["test_accuracy"] == pytest.approx(0.85)
    assert lite0["val_accuracy"] == pytest.approx(0.85)
    assert lite0["params"] == backbones.get("efficientnet_lite0").params
    assert lite0["gmacs"] == pytest.approx(design1.gmacs_at("efficientnet_lite0", 288))
    # A percentile bootstrap of 170 right out of 200: about +-5 points (binomial sd 2.5).
    assert 0.79 <= lite0["test_ci_low"] <= 0.82
    assert 0.88 <= lite0["test_ci_high"] <= 0.91
    again = design1.backbone_table(results, seed=3).set_index("backbone")
    assert again.loc["efficientnet_lite0", "test_ci_low"] == lite0["test_ci_low"]
    # A stored interval is used as is; speed only where it was measured.
    mobile = table.set_index("backbone").loc["mobilenet_v2"]
    assert (mobile["test_ci_low"], mobile["test_ci_high"]) == (0.7, 0.8)
    assert mobile["images_per_s"] == 40.0
    assert np.isnan(lite0["images_per_s"])


def test_sentence_names_the_cheapest_backbone_a_paired_test_does_not_tell_apart():
    table = design1.backbone_table(
        [
            _result("efficientnet_lite2", 260, 180),  # 90%, the most compute
            _result("efficientnet_lite0", 224, 176, shuffle=1),  # 88%, other cells: a tie
            _result("efficientnet_lite1", 240, 177, shuffle=2),
        ]
    )
    lite0 = table.set_index("backbone").loc["efficientnet_lite0"]
    assert lite0["vs_best"] == pytest.approx(-0.02)
    assert lite0["vs_best_ci_low"] < 0 < lite0["vs_best_ci_high"]
    assert np.isnan(table.loc[0, "vs_best"])  # the best is not compared with itself
    text = narrative.backbone_sentence(table)
    assert "efficientnet_lite2" in text and "90.0%" in text
    assert "tells 0 of the other 2 backbones apart" in text
    assert "The cheapest of those is efficientnet_lite0" in text and "-2.0 points" in text


def test_a_paired_test_tells_apart_what_overlapping_intervals_do_not():
    """lite0 is right on a subset of lite2's cells, 10 fewer: the intervals overlap, yet on
    the same cells lite0 is never right where lite2 is wrong, so it is worse."""
    table = design1.backbone_table(
        [_result("efficientnet_lite2", 260, 180), _result("efficientnet_lite0", 224, 170)]
    )
    best, other = table.iloc[0], table.iloc[1]
    assert other["test_ci_high"] > best["test_ci_low"]  # the marginal intervals overlap
    assert other["vs_best_ci_high"] < 0 and other["vs_best_p"] < 0.01
    assert "every other backbone is worse" in narrative.backbone_sentence(table)


def test_sentence_when_the_best_is_also_the_cheapest():
    tied = design1.backbone_table(
        [_result("mobilenet_v2", 224, 180), _result("efficientnet_lite2", 260, 178, shuffle=3)]
    )
    assert "1 is not told apart, but none costs less" in narrative.backbone_sentence(tied)


def test_the_same_labels_on_other_cells_are_not_paired():
    other = _result("efficientnet_lite0", 224, 170)
    other.test_cells = tuple(f"other{i}" for i in range(200))
    table = design1.backbone_table([_result("efficientnet_lite2", 260, 180), other])
    assert np.isnan(table.loc[1, "vs_best"])
    assert "takes a paired test" in narrative.backbone_sentence(table)


def test_without_answers_cell_by_cell_the_sentence_ranks_nothing():
    table = design1.backbone_table(
        [_result("mobilenet_v2", 224, 180, cells=False), _result("efficientnet_lite0", 224, 170)]
    )
    text = narrative.backbone_sentence(table)
    assert "takes a paired test" in text and "cheapest" not in text


def test_one_backbone_says_how_to_run_the_comparison():
    table = design1.backbone_table([_result("efficientnet_lite0", 288, 178)])
    text = narrative.backbone_sentence(table)
    assert "needs several backbones" in text and "only efficientnet_lite0" in text
    for name in backbones.offline_backbones():
        assert name in text
    # The command in the sentence parses into the four backbones.
    key, value = profiles.parse_override(text.split("-p '")[1].split("'")[0])
    assert key == "02_feature_extraction_svm.backbones"
    assert sorted(value) == sorted(backbones.offline_backbones())


def test_plot_labels_every_point_and_draws_the_paper_lines():
    table = design1.backbone_table(
        [_result("efficientnet_lite0", 288, 178), _result("mobilenet_v2", 224, 160)]
    )
    fig = plots.plot_accuracy_vs_compute(table)
    ax = fig.axes[0]
    labels = {t.get_text() for t in ax.texts}
    assert labels == {"efficientnet_lite0 (288 px)", "mobilenet_v2 (224 px)"}
    lines = {
        round(line.get_ydata()[0], 3) for line in ax.get_lines() if line.get_linestyle() == "--"
    }
    assert lines == {round(v, 3) for (_, d), v in paper.ACCURACY.items() if d == "svm"}
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert any("VGG-16" in t for t in legend)
    matplotlib.pyplot.close(fig)


def test_backbones_profile_compares_the_offline_backbones_on_full_data():
    profiles = load_profiles()
    prof, full = profiles["backbones"], profiles["full"]
    assert prof["common"] == full["common"]
    nb02 = prof["notebooks"]["02_feature_extraction_svm"]
    assert sorted(nb02["backbones"]) == sorted(backbones.offline_backbones())
    assert nb02["image_size"] is None
    assert prof["notebooks"]["03_fine_tuning"]["backbones"] == ["efficientnet_lite0"]
    assert set(prof["notebooks"]) == set(full["notebooks"])
    # "03_fine_tuning: as `full`", as the file says: one recipe, not a copy left behind.
    assert prof["notebooks"]["03_fine_tuning"] == full["notebooks"]["03_fine_tuning"]
