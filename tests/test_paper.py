"""bloodlib.core.paper (the paper's facts) and bloodlib.teach.versus_paper (the differences table)."""

from __future__ import annotations

import pytest

from bloodlib import evaluate
from bloodlib.core import paper
from bloodlib.teach import versus_paper

pytestmark = pytest.mark.unit

SVM_PARAMS = {
    "data": "sample",
    "backbones": ["efficientnet_lite0"],
    "image_size": 288,
    "svm_cv": 3,
    "n_images": 240,
}


def test_differences_has_the_four_columns_and_one_row_per_aspect():
    table = versus_paper.differences("svm", SVM_PARAMS)
    assert list(table.columns) == ["aspect", "paper", "here", "why"]
    assert table["aspect"].is_unique
    assert not table.isna().any().any()


def test_differences_follows_the_parameters():
    table = versus_paper.differences("svm", SVM_PARAMS).set_index("aspect")
    assert "288 px" in table.loc["input size", "here"]
    assert "3-fold" in table.loc["classifier", "here"]
    assert "240 usable images" in table.loc["data", "here"]
    assert table.loc["backbone", "here"] == "EfficientNet-Lite0"
    assert table.loc["backbone", "paper"] == "VGG-16, InceptionV3 (ImageNet weights)"
    native = versus_paper.differences(
        "svm", {**SVM_PARAMS, "backbones": ["vgg16"], "image_size": None}
    )
    native = native.set_index("aspect")
    assert native.loc["input size", "why"] == "the networks' native sizes"


def test_finetune_rows_and_reported_accuracies():
    params = {
        "data": "/some/folder",
        "backbones": ["vgg16", "inception_v3"],
        "image_size": None,
        "epochs_head": 3,
        "epochs_finetune": 15,
        "unfreeze_from_block": 0,
        "label_smoothing": 0.0,
        "augment": False,
        "max_train_images": None,
    }
    table = versus_paper.differences("design 2", params).set_index("aspect")
    assert table.loc["backbone", "why"] == "same as the paper"
    assert table.loc["schedule", "here"] == "3 epochs head only, then 15 epochs fine-tuning"
    assert table.loc["augmentation", "here"] == "none"
    assert table.loc["reported test accuracy", "paper"] == "VGG-16 96.2 %, InceptionV3 95 %"
    assert table.loc["schedule", "paper"] == paper.UNKNOWN


def test_paper_accuracies_are_the_ones_evaluation_compares_with():
    import inspect

    default = inspect.signature(evaluate.comparison_table).parameters["paper"].default
    assert default is paper.ACCURACY


def test_unknown_design_names_the_choices():
    with pytest.raises(ValueError, match="finetune"):
        versus_paper.differences("boosting", SVM_PARAMS)


@pytest.mark.parametrize("given", ["sample", "SAMPLE", None, "by path"])
def test_the_sample_given_by_path_reads_as_the_sample_everywhere(given):
    """One test of "is this the sample?": the banner's and the table's answers agree (issue 31)."""
    from bloodlib.core.config import SAMPLE_DIR
    from bloodlib.data import source

    data = str(SAMPLE_DIR / "..") + "/sample" if given == "by path" else given
    assert source.is_sample(data)
    row = (
        versus_paper.differences("svm", {**SVM_PARAMS, "data": data})
        .set_index("aspect")
        .loc["data"]
    )
    assert row["here"].startswith("the embedded sample")
    assert row["why"] == "a smoke test that runs in minutes on a laptop"


def test_another_folder_is_not_the_sample(tmp_path):
    row = versus_paper.differences("svm", {**SVM_PARAMS, "data": str(tmp_path)}).set_index("aspect")
    assert row.loc["data", "why"] == "the data given to this run"
