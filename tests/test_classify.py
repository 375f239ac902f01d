"""Classifying a folder with a saved model: every file a row, defects reported, never fatal."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tiny_models
from tiny_models import write_cell

from bloodlib import CLASSES
from bloodlib.core.hashing import sha256_file
from bloodlib.models import backbones, features, svm
from bloodlib.models.saved import SidecarError, save_classifier
from bloodlib.predict.classify import classify_folder
from bloodlib.predict.engine import load_classifier

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parent.parent
SIZE = tiny_models.SIZE


@pytest.fixture(scope="module")
def keras_model(tmp_path_factory) -> Path:
    """``models/m.keras`` + sidecar: a fixed-weight model whose answers are known in advance."""
    path = tmp_path_factory.mktemp("run") / "models" / "m.keras"
    return save_classifier(
        tiny_models.vertex_classifier(SIZE),
        path,
        {
            "name": "m",
            "method": "finetune",
            "backbone": "tiny",
            "classes": list(CLASSES),
            "image_size": SIZE,
        },
    )


@pytest.fixture
def flat_folder(tmp_path) -> Path:
    """Five good JPEGs of classes 0..4, and four files that cannot be classified."""
    folder = tmp_path / "incoming"
    for c in range(5):
        write_cell(folder / f"cell_{c}.jpg", c, seed=c)
    buf = io.BytesIO()
    tiny_models.cell(6, seed=99, size=64).save(buf, "JPEG")
    good = buf.getvalue()
    (folder / "corrupt.jpg").write_bytes(good[: len(good) // 2])
    (folder / "notes.jpg").write_text("cell counts: 12, 15, 9\n")
    (folder / "._cell_0.jpg").write_bytes(b"\x00\x05\x16\x07\x00\x02\x00\x00" + b"\0" * 400)
    write_cell(folder / ".thumbs" / "cell_1.jpg", 1, seed=1)  # decodes, but hidden
    return folder


@pytest.fixture
def layout_folder(tmp_path) -> Path:
    """Class layout: basophil/ (two right, one eosinophil-coloured) and eosinophil/ (three right)."""
    folder = tmp_path / "labelled"
    for i, c in enumerate([0, 0, 1]):
        write_cell(folder / "basophil" / f"BA_{i}.jpg", c, seed=10 + i)
    for i in range(3):
        write_cell(folder / "eosinophil" / f"EO_{i}.jpg", 1, seed=20 + i)
    return folder


def test_flat_folder_with_defects(keras_model, flat_folder, tmp_path):
    out = tmp_path / "out" / "predictions.csv"
    result = classify_folder(keras_model, flat_folder, out, batch_size=2, progress=False, workers=2)

    assert result.out_csv == out and out.is_file()
    csv = pd.read_csv(out, keep_default_na=False)
    assert len(csv) == len(result.table) == 9
    assert set(csv["relpath"]) == {
        *(f"cell_{c}.jpg" for c in range(5)),
        "corrupt.jpg",
        "notes.jpg",
        "._cell_0.jpg",
        ".thumbs/cell_1.jpg",
    }
    assert os.listdir(out.parent) == ["predictions.csv"]  # written atomically

    skipped = result.skipped.set_index("relpath")
    assert sorted(skipped.index) == [
        "._cell_0.jpg",
        ".thumbs/cell_1.jpg",
        "corrupt.jpg",
        "notes.jpg",
    ]
    assert skipped.loc["corrupt.jpg", "status"] in {"truncated", "corrupt"}
    assert skipped.loc["notes.jpg", "status"] == "not_image"
    assert skipped.loc["._cell_0.jpg", "status"] == "hidden"
    assert skipped.loc[".thumbs/cell_1.jpg", "status"] == "hidden"
    assert all(len(r) > 0 for r in skipped["reason"])

    table = csv.set_index("relpath")
    for c in range(5):
        row = table.loc[f"cell_{c}.jpg"]
        assert row["status"] == "classified"
        assert row["reason"] == ""
        assert row["predicted"] == CLASSES[c]  # the fixed model's known answer
        assert 0.9 < float(row["probability"]) <= 1.0
        top3 = row["top3"].split("; ")
        assert len(top3) == 3 and top3[0].startswith(f"{CLASSES[c]}:")
        p = np.array([float(row[f"p_{k}"]) for k in CLASSES])
        assert p.sum() == pytest.approx(1.0, abs=1e-4)
        assert float(row["probability"]) == pytest.approx(p.max())
    for name in skipped.index:
        row = table.loc[name]
        assert row["status"] == "skipped"
        assert row["reason"] == skipped.loc[name, "reason"]
        assert row["predicted"] == "" and row["top3"] == ""

    diff = result.differential
    assert list(diff.index) == list(CLASSES)
    assert int(diff["count"].sum()) == 5
    assert diff["percent"].sum() == pytest.approx(100.0)
    assert diff.loc[CLASSES[0], "count"] == 1 and diff.loc[CLASSES[7], "count"] == 0
    assert result.metrics is None  # not in the class layout

    report = result.report()
    assert "classified 5 images" in report
    assert "skipped 4 file(s)" in report
    assert "corrupt.jpg" in report and str(out) in report


def test_class_layout_gives_metrics(keras_model, layout_folder):
    result = classify_folder(keras_model, layout_folder, progress=False)
    assert result.out_csv is None
    assert len(result.skipped) == 0
    m = result.metrics
    assert m is not None and m["n"] == 6
    assert m["accuracy"] == pytest.approx(5 / 6)  # labels come from the folders
    assert m["per_class"]["basophil"]["sensitivity"] == pytest.approx(2 / 3)
    assert m["per_class"]["eosinophil"]["sensitivity"] == pytest.approx(1.0)
    assert set(m["per_class"]) == set(CLASSES)
    assert list(result.table["label"]) == ["basophil"] * 3 + ["eosinophil"] * 3
    report = result.report()
    assert "against folder labels: accuracy 0.8333" in report
    assert "basophil" in report


def test_folder_with_only_defects_and_empty_folder(keras_model, tmp_path):
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "notes.jpg").write_text("not an image")
    result = classify_folder(keras_model, bad, tmp_path / "bad.csv", progress=False)
    assert len(result.table) == 1 and len(result.skipped) == 1
    assert int(result.differential["count"].sum()) == 0
    result.report()

    empty = tmp_path / "empty"
    empty.mkdir()
    result = classify_folder(keras_model, empty, tmp_path / "empty.csv", progress=False)
    assert len(result.table) == 0 and result.metrics is None
    assert (tmp_path / "empty.csv").is_file()
    result.report()


def test_missing_folder_or_sidecar(keras_model, tmp_path):
    with pytest.raises(FileNotFoundError, match="not a folder"):
        classify_folder(keras_model, tmp_path / "nowhere", progress=False)
    orphan = tmp_path / "orphan.keras"
    orphan.write_bytes(keras_model.read_bytes())
    (tmp_path / "x").mkdir()
    with pytest.raises(SidecarError, match="sidecar"):
        classify_folder(orphan, tmp_path / "x", progress=False)


def test_cli_classify(keras_model, flat_folder, tmp_path):
    out = tmp_path / "cli.csv"
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "BLOODLIB_CACHE": str(tmp_path / "cache"),
        "TF_CPP_MIN_LOG_LEVEL": "2",
    }
    proc = subprocess.run(
        [sys.executable, "-m", "bloodlib", "classify", str(keras_model), str(flat_folder),
         "--out", str(out), "--batch-size", "4"],
        capture_output=True, text=True, env=env, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "classified 5 images" in proc.stdout
    assert "skipped 4 file(s)" in proc.stdout
    csv = pd.read_csv(out)
    assert len(csv) == 9
    assert (csv["status"] == "classified").sum() == 5


# --------------------------------------------------------------------------- SVM kind


@pytest.fixture
def svm_model(tmp_path, monkeypatch) -> Path:
    """An SVM on the (registered) tiny mean-colour backbone, trained on all eight classes."""
    bb = tiny_models.backbone("tiny", tiny_models.mean_colour_builder, "none", feature_dim=3)
    monkeypatch.setitem(backbones.REGISTRY, "tiny", bb)
    paths = [
        str(write_cell(tmp_path / "train" / f"{c}_{i}.jpg", c, seed=100 * c + i))
        for c in range(8)
        for i in range(3)
    ]
    y = np.repeat(np.arange(8), 3)
    fs = features.extract(
        paths, [sha256_file(p) for p in paths], "tiny", image_size=SIZE, weights=None,
        progress=False,
    )  # fmt: skip
    grid = [{"svc__kernel": ["linear"], "svc__C": [1.0]}]
    model = svm.fit_svm(fs.features, y, grid=grid, cv=3, n_jobs=1).model
    path = tmp_path / "models" / "tiny_svm.skops"
    return save_classifier(
        model,
        path,
        {
            "name": "tiny_svm",
            "method": "svm",
            "backbone": "tiny",
            "classes": list(CLASSES),
            "image_size": SIZE,
            "weights": None,
        },
    )


def test_svm_model_classifies_a_folder(svm_model, flat_folder, layout_folder, tmp_path):
    result = classify_folder(svm_model, flat_folder, tmp_path / "svm.csv", progress=False)
    assert len(result.table) == 9 and len(result.skipped) == 4
    done = result.table[result.table["status"] == "classified"].set_index("relpath")
    assert [done.loc[f"cell_{c}.jpg", "predicted"] for c in range(5)] == list(CLASSES[:5])
    assert int(result.differential["count"].sum()) == 5

    result = classify_folder(svm_model, layout_folder, progress=False)
    assert result.metrics["accuracy"] == pytest.approx(5 / 6)

    # The classifier's probabilities line up with the sidecar's classes.
    clf = load_classifier(svm_model)
    proba = clf.predict_proba([str(write_cell(tmp_path / "x.jpg", 3, seed=7))], progress=False)
    assert proba.shape == (1, 8) and proba.argmax() == 3
