"""``python -m bloodlib report RUN``: a run's summary in Markdown, HTML and JSON (issue 32)."""

from __future__ import annotations

import json

import pytest
import tiny_models

from bloodlib import CLASSES
from bloodlib.cli import main
from bloodlib.core.io import write_json
from bloodlib.models.saved import save_classifier
from bloodlib.study import report

pytestmark = pytest.mark.unit

ENTRY = {
    "backbone": "tiny",
    "method": "finetune",
    "balanced_accuracy": 0.9,
    "macro_f1": 0.88,
    "ece": 0.12,
    "ece_after_scaling": 0.03,
    "temperature": 0.5,
    "n_test": 40,
}


@pytest.fixture
def run(tmp_path):
    run = tmp_path / "runs" / "demo"
    info = {"method": "finetune", "backbone": "tiny", "classes": list(CLASSES), "image_size": 32}
    save_classifier(
        tiny_models.vertex_classifier(),
        run / "models" / "net.keras",
        {**info, "metrics": {"train_seconds": 123.0}},
    )
    models = [
        {**ENTRY, "name": "net", "tta": False, "test_accuracy": 0.925,
         "accuracy_ci95": [0.85, 0.975], "model_path": "models/net.keras"},
        {**ENTRY, "name": "net_tta", "tta": True, "test_accuracy": 0.95,
         "accuracy_ci95": [0.875, 1.0], "model_path": "models/net.keras"},
    ]  # fmt: skip
    write_json(run / "metrics.json", {"models": models, "split": {"seed": 7}})
    write_json(
        run / "provenance.json",
        {
            "profile": "sample",
            "bloodlib_version": "9.9",
            "python": "3.11.7",
            "git": {"commit": "abcdef0123456789", "dirty": False},
            "hardware": {"cpu_model": "Test CPU", "usable_cores": 2, "gpus": []},
            "notebooks": [{"name": "01_data_exploration", "status": "ran", "elapsed_s": 90}],
            "data": {"data_json": {"source": "sample", "usable": 100, "files": 104,
                                   "status_counts": {"ok": 100, "hidden": 4},
                                   "split_counts": {"train": 50, "val": 10, "test": 40}}},
        },
    )  # fmt: skip
    (run / "figures").mkdir()
    (run / "figures" / "04_comparison.png").write_bytes(b"\x89PNG")
    return run


def test_markdown_and_html_say_every_model_and_its_scope(run, capsys):
    assert main(["report", str(run)]) == 0
    assert "report.md" in capsys.readouterr().out
    md = (run / "report.md").read_text()
    assert (
        "| net | 92.5 % (85.0 % – 97.5 %) | 90.0 % | 88.0 % | 0.120 → 0.030 (T = 0.50) | 40 | 2.0 |"
        in md
    )
    assert "| net_tta | 95.0 % (87.5 % – 100.0 %)" in md  # no training time of its own
    assert (
        "split 50 train / 10 val / 40 test; split seed 7; 2-core Test CPU, no GPU; commit abcdef0"
        in md
    )
    assert "| 01_data_exploration | ran | 1.5 |" in md
    assert "![Test accuracy per model, with the paper's results](figures/04_comparison.png)" in md
    page = (run / "report.html").read_text()
    assert page.startswith("<!DOCTYPE html>") and "<table>" in page
    assert "<td>92.5 % (85.0 % – 97.5 %)</td>" in page
    assert 'src="figures/04_comparison.png"' in page


def test_json_is_the_summary_the_tables_are_made_from(run):
    (path,) = report.write(run, ["json"])
    data = json.loads(path.read_text())
    assert [m["name"] for m in data["models"]] == ["net", "net_tta"]
    assert data["models"][0]["train_minutes"] == 2.0 and data["split_seed"] == 7


def test_a_folder_without_metrics_says_how_to_make_them(tmp_path, capsys):
    assert main(["report", str(tmp_path)]) == 2
    assert "run the study first" in capsys.readouterr().err
