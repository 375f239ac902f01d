"""Notebook 05's measurements (bloodlib.study.domain): a synthetic other lab, scoring, remedies, records."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tiny_models
from shared_data import TECOM
from tiny_models import write_cell

from bloodlib import CLASSES
from bloodlib.core.config import SAMPLE_DIR
from bloodlib.core.io import read_json, write_json
from bloodlib.data import labs
from bloodlib.models import backbones
from bloodlib.models.saved import read_sidecar, save_classifier
from bloodlib.predict.classify import classify_folder
from bloodlib.predict.engine import load_classifier
from bloodlib.study import domain
from bloodlib.teach import narrative, plots

SIZE = tiny_models.SIZE
TINY = tiny_models.backbone("tiny", tiny_models.convnet_builder, "caffe", feature_dim=8)


def sample_frame(per_class: int, classes=CLASSES) -> pd.DataFrame:
    """The first ``per_class`` embedded-sample cells of each class (path, label)."""
    rows = []
    for c in classes:
        files = sorted(p for p in (SAMPLE_DIR / c).glob("*.jpg") if not p.name.startswith("."))
        if len(files) < per_class:
            pytest.skip("the embedded sample is missing or too small")
        rows += [{"path": str(p), "label": c} for p in files[:per_class]]
    return pd.DataFrame(rows)


@pytest.fixture(scope="module")
def vertex_model(tmp_path_factory) -> Path:
    """The fixed vertex classifier (tiny_models): a cell of cube corner c is class c."""
    path = tmp_path_factory.mktemp("run") / "models" / "tiny_finetune.keras"
    return save_classifier(
        tiny_models.vertex_classifier(SIZE),
        path,
        {
            "method": "finetune",
            "backbone": "tiny",
            "classes": list(CLASSES),
            "image_size": SIZE,
            "temperature": 1.5,
            "reject_threshold": 0.9,
        },
    )


@pytest.fixture(scope="module")
def vertex_lab(tmp_path_factory) -> Path:
    """Four classes, three cells each; the last monocyte is a basophil's colour (wrong)."""
    root = tmp_path_factory.mktemp("vlab") / "lab"
    for cls in ("eosinophil", "lymphocyte", "monocyte", "neutrophil"):
        c = CLASSES.index(cls)
        for i in range(3):
            wrong = cls == "monocyte" and i == 2
            write_cell(root / cls / f"{i}.jpg", CLASSES.index("basophil") if wrong else c, i)
    return root


# --- the other lab -----------------------------------------------------------------------


@pytest.mark.unit
def test_synthetic_lab_is_written_once_beside_its_marker(tmp_path):
    test = sample_frame(2, classes=("lymphocyte", "platelet"))
    out = tmp_path / "run" / "other_lab_synthetic"
    assert labs.synthetic_lab(test, out) == out
    files = sorted(out.rglob("*.jpg"))
    assert [f.relative_to(out).as_posix().split("/")[0] for f in files] == ["lymphocyte"] * 2 + [
        "platelet"
    ] * 2
    marker = labs.synthetic_marker(out)
    assert marker.parent == out.parent and marker.is_file()  # not among the lab's cells
    stamp = [f.stat().st_mtime_ns for f in files]
    labs.synthetic_lab(test, out)  # same cells: kept as written
    assert [f.stat().st_mtime_ns for f in files] == stamp
    lab = labs.load_lab(out, synthetic=True)
    assert lab.classes_present == ["lymphocyte", "platelet"] and lab.ignored == {}
    assert lab.describe()["per_class"] == {"lymphocyte": 2, "platelet": 2}

    labs.synthetic_lab(test.iloc[:3], out)  # another split: made again from those cells
    assert len(list(out.rglob("*.jpg"))) == 3
    assert labs.load_lab(out).fingerprint != lab.fingerprint

    foreign = tmp_path / "somebody_elses"
    foreign.mkdir()
    with pytest.raises(FileExistsError, match="not written by bloodlib.data.labs.synthetic_lab"):
        labs.synthetic_lab(test, foreign)
    with pytest.raises(ValueError, match="no test cells"):
        labs.synthetic_lab(test.iloc[:0], tmp_path / "empty")


@pytest.mark.unit
def test_fingerprint_follows_content_and_labels(vertex_lab):
    lab = labs.load_lab(vertex_lab)
    assert lab.fingerprint == labs.fingerprint(lab.cells.sample(frac=1, random_state=0))
    relabelled = lab.cells.assign(label=lab.cells["label"].where(lab.cells.index != 0, "ig"))
    assert labs.fingerprint(relabelled) != lab.fingerprint
    changed = lab.cells.assign(sha256=lab.cells["sha256"].where(lab.cells.index != 1, "0" * 64))
    assert labs.fingerprint(changed) != lab.fingerprint


@pytest.mark.unit
def test_base_model_path(tmp_path):
    models = tmp_path / "models"
    with pytest.raises(FileNotFoundError, match="run notebook 03"):
        domain.base_model_path(tmp_path)
    models.mkdir()
    for name in ("b_finetune.keras", "a_finetune.keras", "a_robust.keras"):
        (models / name).write_bytes(b"")
    assert domain.base_model_path(tmp_path).name == "a_finetune.keras"
    assert domain.base_model_path(tmp_path, "a_robust") == models / "a_robust.keras"
    assert domain.base_model_path(tmp_path, "b_finetune.keras") == models / "b_finetune.keras"
    with pytest.raises(FileNotFoundError, match="a_finetune.keras, a_robust.keras"):
        domain.base_model_path(tmp_path, "c_finetune")


# --- scoring -------------------------------------------------------------------------------


@pytest.mark.unit
def test_score_all_classes_restricted_and_rejected():
    classes = ["a", "b", "c"]
    proba = np.array(
        [
            [0.1, 0.2, 0.7],  # a: wrong (c); among a, b: b, still wrong
            [0.6, 0.3, 0.1],  # a: right
            [0.1, 0.5, 0.4],  # b: right
            [0.05, 0.15, 0.8],  # b: wrong (c); among a, b: b, right
        ]
    )
    labels = ["a", "a", "b", "b"]
    full = domain.score(proba, labels, classes)
    assert full["accuracy"] == 0.5 and full["predicted"] == ["c", "a", "b", "c"]
    assert full["recall"] == {"a": 0.5, "b": 0.5} and full["balanced_accuracy"] == 0.5
    assert full["classes_allowed"] is None
    only = domain.score(proba, labels, classes, allowed=["a", "b"])
    assert only["predicted"] == ["b", "a", "b", "b"] and only["accuracy"] == 0.75
    assert only["recall"] == {"a": 0.5, "b": 1.0} and only["balanced_accuracy"] == 0.75
    # Rejection at 0.7 on the restricted probabilities: rows 0 and 1 (0.667 each) fall, the
    # two answered (0.833, 0.75) are right.
    rej = domain.score(proba, labels, classes, allowed=["a", "b"], threshold=0.7)
    assert rej["coverage"] == 0.5 and rej["accepted_accuracy"] == 1.0
    assert rej["all_accuracy"] == only["accuracy"]
    with pytest.raises(ValueError, match="restrict to classes that include every label"):
        domain.score(proba, labels, classes, allowed=["b", "c"])
    assert "predicted" not in domain.without_predictions(full)
    table = domain.predictions_instead(["lymphocyte", "basophil"], ["ig", "basophil"])
    assert list(table.index) == ["basophil", "lymphocyte"] and list(table.columns) == list(CLASSES)
    assert table.loc["lymphocyte", "ig"] == 1 and int(table.to_numpy().sum()) == 2


@pytest.mark.unit
def test_score_agrees_with_classify(vertex_model, vertex_lab):
    """The notebook's table and `classify` must give a lab the same accuracy."""
    lab = labs.load_lab(vertex_lab)
    clf = load_classifier(vertex_model)
    proba = domain.predict(clf, lab.cells["path"])
    for allowed in (None, lab.classes_present):
        ours = domain.score(proba, lab.cells["label"], clf.classes, allowed=allowed)
        theirs = classify_folder(
            vertex_model, vertex_lab, progress=False, classes=allowed, reject_below=0
        ).metrics
        assert ours["n"] == theirs["n"] == 12
        assert ours["accuracy"] == pytest.approx(theirs["accuracy"])
        assert ours["balanced_accuracy"] == pytest.approx(theirs["balanced_accuracy"])
    assert ours["accuracy"] == pytest.approx(11 / 12)  # the basophil-coloured monocyte
    # The sidecar's threshold and temperature, as classify applies them by default.
    rejected = domain.score(proba, lab.cells["label"], clf.classes, temperature=1.5, threshold=0.9)
    default = classify_folder(vertex_model, vertex_lab, progress=False).metrics
    assert rejected["coverage"] == pytest.approx(default["coverage"])
    # Test-time augmentation reaches the model as classify --tta passes it.
    seen = {}
    real = clf.predict_proba
    clf.predict_proba = lambda paths, **kw: seen.update(kw) or real(paths, **kw)
    flipped = domain.predict(clf, lab.cells["path"], tta=True)
    assert seen["tta"] is True
    with_tta = classify_folder(vertex_model, vertex_lab, progress=False, tta=True, reject_below=0)
    tta_scored = domain.score(flipped, lab.cells["label"], clf.classes)
    assert tta_scored["accuracy"] == pytest.approx(with_tta.metrics["accuracy"])


@pytest.mark.unit
def test_coverage_curves_stack_per_set_of_cells():
    p = np.array([[0.9, 0.1], [0.6, 0.4], [0.2, 0.8]])
    curves = domain.coverage_curves({"x": (p, np.array([0, 1, 1])), "y": (p, np.array([0, 0, 1]))})
    assert list(curves["cells"].unique()) == ["x", "y"]
    full = curves[curves["coverage"] == 1.0]
    assert list(full["accuracy"].round(4)) == [0.6667, 1.0]  # predictions 0, 0, 1


# --- why it fails --------------------------------------------------------------------------


@pytest.mark.unit
def test_statistics_see_the_synthetic_shift(tmp_path):
    pbc = sample_frame(3, classes=("lymphocyte", "monocyte", "neutrophil", "eosinophil"))
    lab = labs.load_lab(labs.synthetic_lab(pbc, tmp_path / "other"), synthetic=True)
    stats = {
        "PBC": labs.cell_statistics(pbc["path"], 160),
        "other": labs.cell_statistics(lab.cells["path"], 160),
    }
    table = labs.shift_table(stats)
    assert list(table.columns) == ["PBC", "other"]
    ratio = table.loc["nucleus_fraction", "other"] / table.loc["nucleus_fraction", "PBC"]
    # stain.OTHER_LAB_ZOOM is 1.5; the tint weakens blue (the stain channel), so the
    # thresholded nucleus comes out a little smaller than the zoom alone would make it.
    assert 1.1 < ratio < 1.75
    assert table.loc["b", "other"] > table.loc["b", "PBC"] + 5  # the yellow tint
    assert table.loc["L", "other"] > table.loc["L", "PBC"]  # the brighter camera curve
    text = narrative.shift_sentence(table, "PBC", "other")
    assert f"{table.loc['b', 'other']:.1f}" in text and f"{ratio:.2f} times" in text
    assert len(labs.sample_cells(pbc, n=5, seed=1)) == 5
    assert labs.sample_cells(pbc, n=5, seed=1).equals(labs.sample_cells(pbc, n=5, seed=1))


# --- remedies ------------------------------------------------------------------------------


@pytest.mark.unit
def test_robust_config_is_the_base_recipe_with_domain_augmentation():
    base = dataclasses.asdict(tiny_models.finetune_config(epochs_finetune=2, crop=0.7))
    info = {"name": "tiny_finetune", "config": {**base, "from_the_future": 1}}
    cfg = domain.robust_config(info)
    assert cfg.augment_domain and cfg.augment
    assert cfg.epochs_finetune == 2 and cfg.backbone == "tiny"
    assert cfg.crop == 1.0  # other labs' cells fill the frame: the robust model sees all of it
    assert domain.robust_name(cfg.backbone) == "tiny_robust"
    with pytest.raises(ValueError, match="records no training config"):
        domain.robust_config({"name": "x"})


@pytest.mark.unit
def test_train_robust_saves_and_resumes(monkeypatch, tmp_path):
    monkeypatch.setitem(backbones.REGISTRY, "tiny", TINY)
    root = tmp_path / "cells"
    rows = []
    for c, cls in enumerate(CLASSES):
        for i, part in enumerate(["train"] * 3 + ["val"]):
            rows.append(
                {
                    "path": str(write_cell(root / cls / f"{i}.jpg", c, 7 * c + i)),
                    "label": cls,
                    "split": part,
                }
            )
    split = pd.DataFrame(rows)
    info = {"config": dataclasses.asdict(tiny_models.finetune_config())}
    run = tmp_path / "run"
    first = domain.train_robust(info, split, run, verbose=0)
    assert first.model_path == run / "models" / "tiny_robust.keras" and not first.resumed
    assert read_sidecar(first.model_path)["config"]["augment_domain"] is True
    again = domain.train_robust(info, split, run, verbose=0)
    assert again.resumed and again.model_path == first.model_path


@pytest.mark.unit
def test_upsert_metrics_keeps_other_entries(tmp_path):
    write_json(
        tmp_path / "metrics.json",
        {"models": [{"name": "a"}, {"name": "r", "v": 1}], "split": {"seed": 1}},
    )
    domain.upsert_metrics(tmp_path, {"name": "r", "v": 2})
    domain.upsert_metrics(tmp_path, {"name": "s"})
    data = read_json(tmp_path / "metrics.json")
    assert data == {
        "models": [{"name": "a"}, {"name": "r", "v": 2}, {"name": "s"}],
        "split": {"seed": 1},
    }
    domain.upsert_metrics(tmp_path / "new", {"name": "x"})  # no metrics.json yet
    assert read_json(tmp_path / "new" / "metrics.json") == {"models": [{"name": "x"}]}


@pytest.fixture(scope="module")
def stain_model(tmp_path_factory) -> Path:
    from test_adapt import stain_network

    path = tmp_path_factory.mktemp("run") / "models" / "pbc.keras"
    return save_classifier(
        stain_network(48),
        path,
        {"method": "finetune", "backbone": "tiny", "classes": list(CLASSES), "image_size": 48},
    )


@pytest.mark.unit
def test_adapt_curve_scores_the_cells_not_used(stain_model, tmp_path):
    cells = sample_frame(12, classes=("basophil", "eosinophil", "platelet"))
    folder = labs.synthetic_lab(cells, tmp_path / "lab")
    work = tmp_path / "work" / "not yet made"  # made when missing
    curve = domain.adapt_curve(
        stain_model,
        folder,
        [1, 3],
        repeats=2,
        seed=5,
        epochs=2,
        batch_size=8,
        work_dir=work,
        train="top",  # the tiny network has no blocks for adapt's default "block"
    )
    assert list(curve["shots"]) == [1, 1, 3, 3] and list(curve["seed"]) == [5, 6, 5, 6]
    assert list(curve["n_support"]) == [3, 3, 9, 9]
    assert list(curve["n_held_out"]) == [33, 33, 27, 27]
    assert (curve["before_accuracy_present"].between(0, 1)).all()
    assert curve["accuracy_present"].notna().all()
    assert os.listdir(work) == []  # the adapted models are not kept
    summary = domain.adapt_summary(curve)
    assert list(summary["shots"]) == [1, 3] and list(summary["repeats"]) == [2, 2]
    assert (summary["min"] <= summary["accuracy_present"]).all()
    text = narrative.adapt_sentence(summary, 0.3, repeats=2)
    assert "mean of 2 draws" in text and "30.0 %" in text
    assert "for the base model on the same cells" in text and "not comparable" in text
    with pytest.raises(ValueError, match="at least once"):
        domain.adapt_curve(stain_model, folder, [1], repeats=0)
    assert (curve["n_unlabelled"] == 0).all()

    # With the lab's own cells unlabelled: every cell but the support, on the same draws.
    both = domain.adapt_curve(
        stain_model, folder, [1], seed=5, epochs=2, batch_size=8, train="top", unlabelled=True
    )
    assert list(both["n_support"]) == [3] and list(both["n_unlabelled"]) == [33]
    assert list(both["before_accuracy_present"]) == list(curve["before_accuracy_present"][:1])
    text = narrative.unlabelled_sentence(domain.adapt_summary(both), summary)
    assert "33 unlabelled" in text and "transductive" in text
    assert "not run" in narrative.unlabelled_sentence(domain.adapt_summary(both.iloc[:0]), summary)
    present = ["basophil", "eosinophil", "platelet"]
    rows = domain.adapt_rows(domain.adapt_summary(both), present, " + unlabelled")
    assert [(r["remedy"], r["classes"], r["n"]) for r in rows] == [
        ("adapt, 1 per class + unlabelled", "3 present", 33)
    ]
    assert [r["remedy"] for r in domain.adapt_rows(summary, present)] == [
        "adapt, 1 per class",
        "adapt, 3 per class",
    ]


# --- sentences and record ------------------------------------------------------------------


@pytest.mark.unit
def test_sentences_say_what_was_measured(tmp_path, vertex_lab):
    lab = labs.load_lab(vertex_lab, synthetic=True)
    assert "synthetic" in narrative.lab_sentence(lab)
    real = labs.load_lab(vertex_lab)
    assert "synthetic" not in narrative.lab_sentence(
        real
    ) and real.fingerprint in narrative.lab_sentence(real)
    labels = ["lymphocyte", "lymphocyte", "monocyte"]
    proba = np.full((3, 8), 0.01)
    proba[0, CLASSES.index("ig")] = proba[1, CLASSES.index("lymphocyte")] = 0.9
    proba[2, CLASSES.index("platelet")] = 0.9
    proba[0, CLASSES.index("lymphocyte")] = proba[2, CLASSES.index("monocyte")] = 0.05
    a = domain.score(proba, labels)
    p = domain.score(proba, labels, allowed=["lymphocyte", "monocyte"])
    text = narrative.zero_shot_sentence(a, p, pbc=0.97)
    assert "97.0 %" in text and "33.3 %" in text and "100.0 %" in text
    assert "2 of the 3 cells were called a class this lab does not have" in text
    every = domain.score(proba, labels, allowed=list(CLASSES))
    assert "changes nothing" in narrative.zero_shot_sentence(a, every, pbc=0.97)
    assert "by construction" in narrative.robust_sentence(0.97, 0.96, 0.5, 0.9, synthetic=True)
    assert "by construction" not in narrative.robust_sentence(0.97, 0.96, 0.5, 0.9, False)
    assert "-1.0 points" in narrative.robust_sentence(0.97, 0.96, 0.5, 0.9, False)
    rows = pd.DataFrame(
        [
            domain.remedy_row("none", "other lab", a),
            domain.remedy_row("classes present", "other lab", p),
            domain.remedy_row("reject", "other lab", {**p, "coverage": 0.5}),
        ]
    )
    assert list(rows["classes"]) == ["all 8", "2 present", "2 present"]
    text = narrative.remedies_sentence(rows)
    assert "**classes present**" in text and "+66.7 points" in text and "all 8 classes)" in text
    rows.loc[len(rows)] = domain.remedy_row("none", "other lab", {**p, "accuracy": 0.5})
    assert "+50.0 points over the untouched model on the same cells (50.0 %, 2 present" in (
        narrative.remedies_sentence(rows)
    )
    # adapt's rows, scored on its held-out cells, are named but never ranked against them
    rows.loc[len(rows)] = domain.remedy_row("adapt, 1 per class", "other lab", {**p, "n": 2})
    rows.loc[len(rows) - 1, "accuracy"] = 1.0
    text = narrative.remedies_sentence(rows)
    assert "**classes present**" in text and "1 row is scored on other, fewer cells" in text
    assert "95 % interval" in text
    assert "No remedy" in narrative.remedies_sentence(rows, cells="PBC test")
    # The paired test of the best row against the untouched one, on the same cells: the
    # restriction to the lab's classes fixes cells 0 and 2 and breaks none.
    first = rows.iloc[:3]  # none (all 8 classes), classes present, reject: the real rows
    best, base = narrative.best_remedy(first)
    assert best["remedy"] == "classes present" and base["classes"] == "all 8"
    by = {"none": proba, "classes present": proba}
    paired = domain.paired_remedy(by, best, base, labels, CLASSES, ["lymphocyte", "monocyte"])
    assert (paired.n, paired.only_a, paired.only_b) == (3, 0, 2)
    text = narrative.remedies_sentence(first, paired=paired)
    assert "On the same 3 cells, classes present is right on 2" in text
    assert "takes a paired test" not in text
    assert domain.paired_remedy({"none": proba}, best, base, labels, CLASSES, []) is None
    path = domain.save_results(tmp_path, {"x": np.float32(0.5), "lab": lab.describe()})
    assert read_json(path)["x"] == 0.5 and read_json(path)["lab"]["synthetic"] is True


# --- real cells ----------------------------------------------------------------------------


@pytest.mark.data
@pytest.mark.skipif(not TECOM.is_dir(), reason="tecom (external-dev) is not on this machine")
def test_tecom_is_five_white_cell_classes_with_larger_nuclei():
    lab = labs.load_lab(TECOM)
    # 300 files, one of them a byte-identical copy of another lymphocyte: left out, so that
    # no cell is both learnt from and scored (issue 35).
    assert not lab.synthetic and len(lab.cells) == 299
    assert lab.copies[["relpath", "status"]].values.tolist() == [
        ["lymphocyte/tecom_139.bmp", "duplicate"]
    ]
    assert lab.classes_present == ["basophil", "eosinophil", "lymphocyte", "monocyte", "neutrophil"]
    assert lab.fingerprint == labs.load_lab(TECOM).fingerprint
    pbc = sample_frame(8, classes=lab.classes_present)
    stats = {
        "PBC": labs.cell_statistics(pbc["path"], 224),
        "tecom": labs.cell_statistics(labs.sample_cells(lab.cells, 40)["path"], 224),
    }
    table = labs.shift_table(stats)
    # Issue 12: in tecom the white cell fills most of the frame, in PBC about a third of it.
    assert table.loc["nucleus_fraction", "tecom"] > 1.3 * table.loc["nucleus_fraction", "PBC"]


@pytest.mark.unit
def test_entropy_figure_and_sentence():

    entropy = {"PBC test": np.array([0.0, 0.1, 0.2]), "other lab": np.array([0.9, 1.0, 1.1])}
    text = narrative.entropy_sentence(entropy, 5)
    assert "PBC test 0.10" in text and "other lab 1.00" in text and "ln 5 = 1.61" in text
    fig = plots.plot_entropy(entropy, 5)
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_legend().get_texts()][:2] == ["PBC test", "other lab"]
    assert ax.lines[0].get_xdata()[0] == pytest.approx(np.log(5))


@pytest.mark.unit
def test_shots_figure_shows_the_unlabelled_points():
    summary = pd.DataFrame(
        {"shots": [1, 5], "repeats": [2, 2], "accuracy_present": [0.6, 0.8], "min": [0.5, 0.7],
         "max": [0.7, 0.9], "before": [0.4, 0.4]}
    )  # fmt: skip
    both = summary.iloc[1:].assign(accuracy_present=0.85, min=0.8, max=0.95)
    ax = plots.plot_shots(summary, 0.4, both).axes[0]
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert "adapted + unlabelled cells (transductive)" in labels
    marker = next(c for c in ax.containers if hasattr(c, "lines")).lines[0]
    assert list(marker.get_xdata()) == [5] and list(marker.get_ydata()) == [85.0]
    plain = plots.plot_shots(summary, 0.4).axes[0]
    assert "adapted + unlabelled cells (transductive)" not in [
        t.get_text() for t in plain.get_legend().get_texts()
    ]
