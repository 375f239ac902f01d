"""The whole study, end to end, as `make run` runs it: papermill over notebooks 01-04 on the sample.

Metric bounds are loose on purpose: the sample has 30 images per class, so these
check that every stage learns something and reports it, not the study's accuracy
(that is measured on the dev data, see README).
"""

from __future__ import annotations

import json

import pytest

from bloodlib import CLASSES
from bloodlib.runner import run_study

pytestmark = pytest.mark.notebooks

REQUIRED = {"name", "backbone", "method", "test_accuracy", "balanced_accuracy", "per_class", "model_path"}


@pytest.fixture(scope="module")
def sample_run(tmp_path_factory):
    runs = tmp_path_factory.mktemp("runs")
    return run_study("sample", name="ci", runs_root=runs, progress=False)


def test_run_folder_holds_every_output(sample_run):
    for nb in ("01_data_exploration", "02_feature_extraction_svm", "03_fine_tuning", "04_evaluation"):
        assert (sample_run / "notebooks" / f"{nb}.ipynb").is_file()
    for name in ("split.csv", "data.json", "metrics.json", "provenance.json", "quality.csv"):
        assert (sample_run / name).is_file(), name
    assert len(list((sample_run / "figures").glob("*.png"))) >= 10


def test_metrics_json_contract(sample_run):
    metrics = json.loads((sample_run / "metrics.json").read_text())
    models = {m["name"]: m for m in metrics["models"]}
    assert set(models) == {"efficientnet_lite0_svm", "efficientnet_lite0_finetune"}
    for m in models.values():
        assert REQUIRED <= set(m)
        assert m["method"] in {"svm", "finetune"}
        assert (sample_run / m["model_path"]).is_file()
        assert set(m["per_class"]) == set(CLASSES)
        lo, hi = m["accuracy_ci95"]
        assert lo <= m["test_accuracy"] <= hi
    # 8 classes: chance is 0.125. Both designs must clearly beat it even on 168 training images.
    assert models["efficientnet_lite0_svm"]["test_accuracy"] >= 0.5
    assert models["efficientnet_lite0_finetune"]["test_accuracy"] >= 0.3


def test_data_and_provenance(sample_run):
    data = json.loads((sample_run / "data.json").read_text())
    # The embedded sample carries four real defects of the public release (data/README.md).
    assert data["status_counts"] == {"ok": 241, "hidden": 1, "label_conflict": 2, "duplicate": 1}
    prov = json.loads((sample_run / "provenance.json").read_text())
    assert prov["data"]["manifest_hash"] == data["manifest_hash"]


def test_rerun_skips_finished_notebooks(sample_run, capsys):
    run_study("sample", name="ci", runs_root=sample_run.parent, progress=False)
    out = capsys.readouterr().out
    assert out.count("unchanged, skipped") == 4
