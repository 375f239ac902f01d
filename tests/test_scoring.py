"""Scoring saved models (bloodlib.study.scoring): result objects, metrics.json, paired TTA gain, sentences."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import tiny_models
from tiny_models import write_cell

from bloodlib import CLASSES, evaluate
from bloodlib.evaluate import calibration
from bloodlib.evaluate.results import Evaluation
from bloodlib.models import saved
from bloodlib.predict import inference
from bloodlib.study import scoring
from bloodlib.teach import narrative, versus_paper

pytestmark = pytest.mark.unit

SIZE = tiny_models.SIZE


def _save(model, path, info):
    """The one saving function (``saved.save_classifier``), or the older two-step save."""
    if hasattr(saved, "save_classifier"):
        return saved.save_classifier(model, path, info)
    model.save(path)
    return saved.write_sidecar(path, info)


def _result(name, y, pred, *, tta=False, model_path="models/m.keras", **metrics):
    k = len(CLASSES)
    proba = np.full((len(y), k), 0.01)
    proba[np.arange(len(y)), pred] = 1 - 0.01 * (k - 1)
    test = pd.DataFrame({"path": [f"c{i}.jpg" for i in range(len(y))]})
    entry = {"name": name, "tta": tta, "model_path": model_path, "n_test": len(y), **metrics}
    return evaluate.Evaluation(entry, test, np.asarray(y), proba, proba, np.asarray(pred))


def test_paired_comparison_counts_discordant_cells_and_brackets_the_gain():
    y = np.zeros(100, dtype=int)
    a = np.r_[np.zeros(70), np.ones(30)].astype(int)  # 70 right
    b = a.copy()
    b[70:80] = 0  # b fixes 10 of a's errors
    b[0:2] = 1  # and breaks 2
    c = evaluate.paired_comparison(y, a, b, n_boot=2000, seed=0)
    assert (c.n, c.only_b, c.only_a) == (100, 10, 2)
    assert c.accuracy_a == pytest.approx(0.70) and c.accuracy_b == pytest.approx(0.78)
    assert c.difference == pytest.approx(0.08)
    assert c.ci95[0] < c.difference < c.ci95[1]
    # Exact McNemar: P(X <= 2 | X ~ Bin(12, 1/2)), two-sided.
    assert c.p_mcnemar == pytest.approx(2 * (1 + 12 + 66) / 2**12)
    # The paired interval only sees the 12 discordant cells: much narrower than two separate
    # accuracy intervals would be.
    assert c.ci95[1] - c.ci95[0] < 0.15


def test_paired_comparison_of_identical_answers_is_exactly_zero():
    y = np.arange(40) % len(CLASSES)
    pred = np.roll(y, 3)
    c = evaluate.paired_comparison(y, pred, pred, n_boot=100)
    assert c.difference == 0 and c.ci95 == (0.0, 0.0) and c.p_mcnemar == 1.0
    with pytest.raises(ValueError):
        evaluate.paired_comparison(y, pred, pred[:-1])


def test_tta_gains_pairs_each_network_with_its_tta_twin():
    y = np.arange(48) % len(CLASSES)
    wrong = (y + 1) % len(CLASSES)
    plain = np.where(np.arange(48) < 36, y, wrong)
    tta = np.where(np.arange(48) < 40, y, wrong)
    results = [
        _result("net", y, plain),
        _result("net_tta", y, tta, tta=True),
        _result("svm", y, y, model_path="models/svm.joblib"),
    ]
    table = evaluate.tta_gains(results, n_boot=500)
    assert table["model"].tolist() == ["net"]
    row = table.iloc[0]
    assert (row["fixed"], row["broken"], row["n"]) == (4, 0, 48)
    assert row["gain"] == pytest.approx(4 / 48)
    sentence = narrative.tta_sentence(row)
    assert "75.0 %" in sentence and "83.3 %" in sentence and "fixed 4 and broke 0" in sentence
    assert evaluate.tta_gains(results[2:]).empty


def test_tta_sentence_follows_the_interval():
    row = {"model": "m", "n": 10, "plain": 0.5, "tta": 0.6, "gain": 0.1, "fixed": 1, "broken": 0}
    row |= {"p_mcnemar": 1.0}
    assert "includes zero" in narrative.tta_sentence({**row, "ci_lo": 0.0, "ci_hi": 0.3})
    assert "above zero" in narrative.tta_sentence({**row, "ci_lo": 0.05, "ci_hi": 0.3})
    assert "below zero" in narrative.tta_sentence({**row, "ci_lo": -0.3, "ci_hi": -0.05})


@pytest.mark.parametrize(
    ("temperature", "before", "after", "words"),
    [
        (0.17, 0.170, 0.249, ("T = 0.17 < 1", "under-confident", "rose from 0.170 to 0.249")),
        (2.50, 0.120, 0.030, ("T = 2.50 > 1", "over-confident", "fell from 0.120 to 0.030")),
        (1.01, 0.050, 0.049, ("close to 1", "barely moved")),
    ],
)
def test_calibration_sentence_states_what_the_numbers_say(temperature, before, after, words):
    entry = {"name": "m", "temperature": temperature, "ece": before, "ece_after_scaling": after}
    text = narrative.calibration_sentence({**entry, "ece_bins": 5, "n_val": 24})
    for w in words:
        assert w in text


def test_calibration_summary_never_claims_a_fix_that_did_not_happen():
    worse = {"ece": 0.17, "ece_after_scaling": 0.25}
    better = {"ece": 0.17, "ece_after_scaling": 0.10}
    assert "no model" in narrative.calibration_summary([worse, worse])
    assert "raised it for 2" in narrative.calibration_summary([worse, worse])
    assert "every model" in narrative.calibration_summary([better])
    assert "1 of 2 models" in narrative.calibration_summary([better, worse])


def test_interval_sentence_names_what_the_interval_leaves_out():
    entry = {"name": "m", "test_accuracy": 0.75, "n_test": 48, "accuracy_ci95": [0.625, 0.875]}
    text = narrative.interval_sentence(entry)
    assert "36 of 48" in text and "62.5 %" in text and "87.5 %" in text and "25.0 points" in text
    assert "another seed" in text


def test_same_test_cells_refuses_results_on_different_cells():
    y = np.zeros(4, dtype=int)
    a, b = _result("a", y, y), _result("b", y, y)
    assert evaluate.same_test_cells([a, b]) == 4
    b.test = b.test.iloc[::-1].reset_index(drop=True)
    with pytest.raises(ValueError, match="other test cells"):
        evaluate.same_test_cells([a, b])


def test_metrics_round_trip_and_saved_models(tmp_path):
    (tmp_path / "models").mkdir()
    for name in ("a.keras", "b.joblib", "c.keras", "notes.txt"):
        (tmp_path / "models" / name).write_text("x")
    for name in ("a.json", "b.json", "notes.json"):
        (tmp_path / "models" / name).write_text("{}")
    assert [p.name for p in scoring.saved_models(tmp_path)] == ["a.keras", "b.joblib"]
    for name in ("x_robust.keras", "x_robust.json"):  # notebook 05's, scored there
        (tmp_path / "models" / name).write_text("{}")
    assert [p.name for p in scoring.study_models(tmp_path)] == ["a.keras", "b.joblib"]
    y = np.zeros(3, dtype=int)
    path = evaluate.write_metrics(tmp_path, [_result("a", y, y), {"name": "b"}], split={"seed": 1})
    assert path == tmp_path / "metrics.json"
    data = evaluate.read_metrics(tmp_path)
    assert [m["name"] for m in data["models"]] == ["a", "b"] and data["split"] == {"seed": 1}


def test_evaluate_models_adds_a_tta_entry_for_networks(tmp_path, monkeypatch):
    monkeypatch.setattr(inference, "gpu_visible", lambda: False)
    path = tmp_path / "run" / "models" / "m.keras"
    path.parent.mkdir(parents=True)
    info = {"name": "m", "method": "finetune", "backbone": "tiny", "image_size": SIZE}
    _save(tiny_models.vertex_classifier(SIZE), path, {**info, "classes": list(CLASSES)})
    rows = []
    for part, draws in (("val", range(2)), ("test", range(2, 5))):
        for c, label in enumerate(CLASSES):
            for s in draws:
                p = write_cell(tmp_path / "img" / label / f"{part}{s}.jpg", c, seed=10 * c + s)
                rows.append({"path": str(p), "sha256": f"{c}-{s}", "label": label, "split": part})
    split = pd.DataFrame(rows)

    results = scoring.evaluate_models([path], split, tta=True, n_boot=50)
    assert [r.name for r in results] == ["m", "m_tta"]
    plain, tta = results
    assert isinstance(plain, evaluate.Evaluation)
    assert (plain.metrics["tta"], tta.metrics["tta"]) == (False, True)
    assert plain.metrics["engine"] == tta.metrics["engine"] == "tflite"
    assert plain.metrics["model_path"] == tta.metrics["model_path"] == "models/m.keras"
    n = 3 * len(CLASSES)
    assert plain.metrics["n_test"] == len(plain.test) == len(plain.predictions) == n
    assert plain.metrics["n_val"] == 2 * len(CLASSES)
    assert plain.metrics["ece_bins"] == evaluate.calibration_bins(n)
    assert plain.test["split"].eq("test").all()
    # Mean colour decides this model's answer, and no flip or rotation changes a mean.
    assert plain.metrics["test_accuracy"] == tta.metrics["test_accuracy"] == 1.0
    assert plain.correct.all()
    np.testing.assert_allclose(tta.proba, plain.proba, atol=1e-5)
    assert [r.name for r in scoring.evaluate_models([path], split, tta=False, n_boot=50)] == ["m"]
    assert plain.proba_val.shape == (2 * len(CLASSES), len(CLASSES))

    # The temperature and a threshold chosen on validation go into the model's sidecar, and
    # classify's loader reads them back (the sidecar still belongs to its model).
    with pytest.raises(ValueError, match="TTA"):
        scoring.record_rejection(tmp_path / "run", tta)
    record = scoring.record_rejection(tmp_path / "run", plain)
    info = saved.open_model(path).info
    assert info["temperature"] == pytest.approx(plain.metrics["temperature"])
    assert info["reject_threshold"] == record["reject_threshold"]
    assert record["reject_threshold"] is not None  # every validation cell is right here
    assert record["test_coverage"] == 1.0 and record["test_accepted_accuracy"] == 1.0
    assert "uncertain" in narrative.rejection_sentence(record)
    table = versus_paper.recipe_differences(tmp_path / "run", results, "sample")
    assert set(table["model"]) == {"m"} and list(table.columns[1:]) == [
        "aspect",
        "paper",
        "here",
        "why",
    ]


def test_calibration_bins_fit_the_test_set():
    assert evaluate.calibration_bins(48) == calibration.MIN_BINS
    assert evaluate.calibration_bins(200) == 10
    assert evaluate.calibration_bins(10_000) == calibration.MAX_BINS


def _evaluation(name: str, correct: np.ndarray) -> Evaluation:
    """An evaluation of ``len(correct)`` test cells of class 0, right where ``correct``."""
    n = len(correct)
    test = pd.DataFrame({"path": [f"c{i}.jpg" for i in range(n)]})
    pred = np.where(correct, 0, 1)
    proba = np.eye(len(CLASSES))[pred]
    metrics = {"name": name, "test_accuracy": float(correct.mean()), "n_test": n}
    return Evaluation(metrics, test, np.zeros(n, int), proba, proba, pred)


def test_ranking_is_by_a_paired_test_not_by_overlapping_intervals():
    """Two models 5 points apart on 200 cells: their intervals overlap, yet when the leader is
    right on every cell the other is, plus ten, the paired test tells them apart; when they
    differ on many cells both ways, it does not."""
    rng = np.random.default_rng(0)
    b_right = rng.random(200) < 0.75
    a_right = b_right.copy()
    a_right[np.flatnonzero(~b_right)[:10]] = True  # a: b's cells and ten more
    paired = evaluate.leader_and_runner_up([_evaluation("b", b_right), _evaluation("a", a_right)])
    assert paired[:2] == ("a", "b") and (paired[2].only_b, paired[2].only_a) == (10, 0)
    entries = [
        {"name": "a", "test_accuracy": 0.8, "n_test": 200, "accuracy_ci95": [0.74, 0.85]},
        {"name": "b", "test_accuracy": 0.75, "n_test": 200, "accuracy_ci95": [0.69, 0.81]},
    ]
    text = narrative.ranking_sentence(entries, paired=paired)
    assert text.startswith("Highest test accuracy: **a**, 80.0 %") and "Next: b, 75.0 %" in text
    assert "right on 10 that b gets wrong and wrong on 0" in text
    assert "more than the luck" in text and "overlap" not in text
    # the same 5-point gap from 30 cells against 20: not told apart
    mixed = b_right.copy()
    mixed[np.flatnonzero(~b_right)[:30]] = True
    mixed[np.flatnonzero(b_right)[:20]] = False
    tie = evaluate.leader_and_runner_up([_evaluation("b", b_right), _evaluation("a", mixed)])
    assert "do not tell the two apart" in narrative.ranking_sentence(entries, paired=tie)
    # without a paired test the sentence says one is needed, and ranks nothing more
    plain = narrative.ranking_sentence(entries, smoke_test=True)
    assert "takes a paired test" in plain and "smoke-test numbers" in plain


def test_no_paired_test_across_different_cells():
    a = _evaluation("a", np.ones(10, bool))
    b = _evaluation("b", np.zeros(12, bool))
    assert evaluate.leader_and_runner_up([a, b]) is None
    assert evaluate.leader_and_runner_up([a]) is None


def test_ranking_sentence_of_a_tie_and_no_negative_zero():
    a = {"name": "a", "test_accuracy": 0.855, "n_test": 200, "accuracy_ci95": [0.8, 0.9]}
    text = narrative.ranking_sentence([a, {**a, "name": "a_tta"}])
    assert "Tied with a_tta" in text and "-0.0" not in text and "paired test" not in text
    row = {"model": "m", "n": 200, "plain": 0.855, "tta": 0.855, "gain": -0.0, "fixed": 5}
    row |= {"broken": 5, "ci_lo": -0.03, "ci_hi": 0.03, "p_mcnemar": 1.0}
    assert "(+0.0 points)" in narrative.tta_sentence(row)


def test_rejection_sentence_says_when_nothing_is_answered():
    record = {
        "name": "svm",
        "temperature": 1.1,
        "reject_threshold": 0.96,
        "target_accuracy": 0.99,
        "test_coverage": 0.0,
        "test_accepted_accuracy": None,
    }
    assert "answers none of them" in narrative.rejection_sentence(record)
    assert "no threshold" in narrative.rejection_sentence({**record, "reject_threshold": None})


def test_seed_mistakes_pool_each_models_seeds_and_name_the_shared_floor():
    """Three seeds of a network (plus its TTA twins and an ensemble, left out) and one SVM
    seed: only the network is reported, with the cells all three seeds miss first."""
    y = np.arange(10) % len(CLASSES)
    miss_all = y.copy()
    miss_all[[0, 1]] = (y[[0, 1]] + 1) % len(CLASSES)  # cells 0 and 1: every seed wrong
    seed43 = miss_all.copy()
    seed43[5] = (y[5] + 2) % len(CLASSES)  # cell 5: one seed only
    results = [
        _result("net", y, miss_all, model_path="models/net.keras", seed=42),
        _result("net_tta", y, y, tta=True, model_path="models/net.keras", seed=42),
        _result("svm", y, y, model_path="models/svm.skops", seed=42),
        _result("net_seed43", y, seed43, model_path="models/net_seed43.keras", seed=43),
        _result("net_seed44", y, miss_all, model_path="models/net_seed44.keras", seed=44),
        _result("ens", y, y, model_path="models/net_seeds.keras", ensemble=[42, 43, 44]),
    ]
    found = evaluate.seed_mistakes(results)
    assert list(found) == ["net"]
    df = found["net"]
    assert list(df["index"]) == [0, 1, 5] and list(df["n_wrong"]) == [3, 3, 1]
    assert df.loc[0, "true"] == CLASSES[y[0]] and df.loc[0, "pred"] == CLASSES[miss_all[0]]
    text = narrative.seed_mistakes_sentence("net", df, len(y))
    assert "3 of the 10 test cells" in text and "**2** by every seed" in text
    assert "2.3 by each seed" in text  # (3 + 3 + 1) / 3
    assert f"{CLASSES[y[0]]} → {CLASSES[miss_all[0]]} (1)" in text
    assert "every seed" in narrative.seed_mistakes_sentence("net", df[df["n_wrong"] < 3], 10)
    assert "no seed misclassified" in narrative.seed_mistakes_sentence("net", df.head(0), 10)
    # metrics.json: the counts and the cells every seed got wrong, by relpath.
    test = results[0].test.assign(relpath=[f"cls/c{i}.jpg" for i in range(len(y))])
    (record,) = evaluate.seed_mistakes_record(found, test)
    assert record["n_models"] == 3 and record["n_test"] == 10
    assert (record["wrong_for_some_seed"], record["wrong_for_every_seed"]) == (3, 2)
    assert [c["relpath"] for c in record["every_seed_wrong"]] == ["cls/c0.jpg", "cls/c1.jpg"]
    assert record["every_seed_wrong"][0]["pred"] == CLASSES[miss_all[0]]
    right = evaluate.seed_mistakes([_result("a", y, y, seed=42), _result("a_seed43", y, y, seed=43,
                                   model_path="models/m_seed43.keras")])  # fmt: skip
    (clean,) = evaluate.seed_mistakes_record(right, test)
    assert (clean["n_models"], clean["wrong_for_some_seed"], clean["every_seed_wrong"]) == (
        2,
        0,
        [],
    )
    # Seeds scored on other cells cannot be pooled.
    moved = _result("net_seed45", y, y, model_path="models/net_seed45.keras", seed=45)
    moved.test = moved.test.assign(path=moved.test["path"] + "x")
    with pytest.raises(ValueError, match="other test cells"):
        evaluate.seed_mistakes([*results, moved])


def test_a_threshold_that_answers_almost_no_validation_cell_is_not_written(tmp_path):
    """Issue 33: 99 % is reached only by the 2 most confident of 100 validation cells (2 %,
    under reject.MIN_COVERAGE): the threshold is reported unusable and the sidecar gets none."""
    from bloodlib.evaluate import reject

    path = saved.save_classifier(
        tiny_models.vertex_classifier(),
        tmp_path / "run" / "models" / "m.keras",
        {"method": "finetune", "backbone": "tiny", "classes": list(CLASSES), "image_size": 32},
    )
    saved.update_sidecar(path, reject_threshold=0.5)  # a stale threshold from an earlier run
    rng = np.random.default_rng(0)
    conf = np.sort(rng.uniform(0.3, 0.9, 100))[::-1]
    k = len(CLASSES)
    proba_val = np.full((100, k), 0.0)
    proba_val[:, 0] = conf
    proba_val[:, 1:] = ((1 - conf) / (k - 1))[:, None]
    y_val = np.where(np.arange(100) < 2, 0, (np.arange(100) + 1) % 2)  # 2 right, then 1 in 2
    assert reject.choose_threshold(proba_val, y_val, target_accuracy=0.99) is None
    assert reject.choose_threshold(proba_val, y_val, target_accuracy=0.99, min_coverage=0) > 0.8
    test = pd.DataFrame({"path": ["a.jpg", "b.jpg"]})
    result = Evaluation(
        {"name": "m", "tta": False, "temperature": 1.0, "model_path": "models/m.keras"},
        test,
        np.zeros(2, int),
        proba_val[:2],
        proba_val[:2],
        np.zeros(2, int),
        proba_val,
        y_val,
    )
    record = scoring.record_rejection(tmp_path / "run", result)
    assert record["reject_threshold"] is None and record["unusable_threshold"] > 0.8
    assert record["val_coverage"] == pytest.approx(0.02)
    assert saved.read_sidecar(path)["reject_threshold"] is None
    text = narrative.rejection_sentence(record)
    assert "unusable" in text and "2.0 %" in text and "answers every cell" in text
