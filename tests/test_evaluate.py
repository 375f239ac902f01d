"""Metrics of bloodlib.evaluate.metrics against sklearn and hand-computed values."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    confusion_matrix,
    f1_score,
    precision_score,
    recall_score,
    roc_auc_score,
)

from bloodlib import CLASSES
from bloodlib.core import paper
from bloodlib.evaluate.calibration import (
    expected_calibration_error,
    fit_temperature,
    log_average,
    logits_from_proba,
    reliability_table,
    softmax,
)
from bloodlib.evaluate.compare import comparison_table
from bloodlib.evaluate.metrics import bootstrap_ci, evaluate, per_class_table
from bloodlib.evaluate.mistakes import misclassified, shared_mistakes

pytestmark = pytest.mark.unit

K = len(CLASSES)


def _noisy_proba(y: np.ndarray, k: int, strength: float, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return softmax(rng.normal(size=(len(y), k)) + strength * np.eye(k)[y])


@pytest.fixture
def data() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(1)
    y = rng.integers(0, K, size=400)
    return y, _noisy_proba(y, K, strength=2.0)


@pytest.fixture(scope="module")
def overconfident() -> tuple[np.ndarray, np.ndarray]:
    """Logits z with labels drawn from softmax(z / 2.5): softmax(z) is overconfident."""
    rng = np.random.default_rng(7)
    z = rng.normal(0.0, 4.0, size=(20_000, K))
    p = softmax(z, temperature=2.5)
    # Inverse-CDF sampling: one categorical draw per row, vectorised.
    u = rng.random((len(p), 1))
    y = np.minimum((p.cumsum(axis=1) < u).sum(axis=1), K - 1)
    return z, y


def test_matches_sklearn(data):
    y, p = data
    m = evaluate(y, p, CLASSES, n_boot=200)
    pred = p.argmax(axis=1)
    assert m["n"] == len(y)
    assert m["accuracy"] == pytest.approx(accuracy_score(y, pred))
    assert m["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(y, pred))
    assert m["macro_f1"] == pytest.approx(f1_score(y, pred, average="macro"))
    assert m["macro_auc"] == pytest.approx(roc_auc_score(y, p, multi_class="ovr"))
    assert m["confusion"] == confusion_matrix(y, pred, labels=range(K)).tolist()
    prec = precision_score(y, pred, average=None, labels=range(K))
    rec = recall_score(y, pred, average=None, labels=range(K))
    for c, name in enumerate(CLASSES):
        pc = m["per_class"][name]
        assert pc["precision"] == pytest.approx(prec[c])
        assert pc["sensitivity"] == pytest.approx(rec[c])
        assert pc["support"] == int((y == c).sum())
        assert pc["auc"] == pytest.approx(roc_auc_score(y == c, p[:, c]))


def test_specificity_and_calibration_by_hand():
    # 3 classes, 6 samples; predictions = argmax.
    y = np.array([0, 0, 1, 1, 2, 2])
    p = np.array(
        [
            [0.8, 0.1, 0.1],  # 0 -> 0
            [0.3, 0.6, 0.1],  # 0 -> 1
            [0.2, 0.7, 0.1],  # 1 -> 1
            [0.1, 0.8, 0.1],  # 1 -> 1
            [0.1, 0.1, 0.8],  # 2 -> 2
            [0.5, 0.2, 0.3],  # 2 -> 0
        ]
    )
    m = evaluate(y, p, ["a", "b", "c"], n_boot=50)
    # Confusion rows = true: [[1,1,0],[0,2,0],[1,0,1]]
    assert m["confusion"] == [[1, 1, 0], [0, 2, 0], [1, 0, 1]]
    # Specificity = TN / (TN + FP): class a has FP 1 among 4 negatives, b has FP 1, c has 0.
    assert m["per_class"]["a"]["specificity"] == pytest.approx(3 / 4)
    assert m["per_class"]["b"]["specificity"] == pytest.approx(3 / 4)
    assert m["per_class"]["c"]["specificity"] == pytest.approx(1.0)
    assert m["per_class"]["b"]["precision"] == pytest.approx(2 / 3)
    assert m["per_class"]["c"]["sensitivity"] == pytest.approx(1 / 2)
    # NLL and multi-class Brier from their definitions.
    p_true = p[np.arange(6), y]
    assert m["nll"] == pytest.approx(-np.log(p_true).mean())
    assert m["brier"] == pytest.approx(((p - np.eye(3)[y]) ** 2).sum(axis=1).mean())
    # ECE with 15 bins: confidences 0.8 (3 correct: bin 11), 0.6 (wrong, bin 8),
    # 0.7 (correct, bin 10), 0.5 (wrong, bin 7).
    expected = (3 * abs(1 - 0.8) + abs(0 - 0.6) + abs(1 - 0.7) + abs(0 - 0.5)) / 6
    assert m["ece"] == pytest.approx(expected)


def test_perfect_predictions():
    y = np.repeat(np.arange(K), 5)
    p = np.eye(K)[y]
    m = evaluate(y, p, CLASSES, n_boot=100)
    assert m["accuracy"] == 1.0
    assert m["balanced_accuracy"] == 1.0
    assert m["accuracy_ci95"] == [1.0, 1.0]
    assert m["macro_f1"] == 1.0
    assert m["macro_auc"] == 1.0
    assert m["ece"] == pytest.approx(0.0)
    assert m["nll"] == pytest.approx(0.0, abs=1e-12)
    assert m["brier"] == pytest.approx(0.0)
    assert all(pc["specificity"] == 1.0 for pc in m["per_class"].values())


def test_ece_near_zero_when_confidence_matches_accuracy():
    # Every prediction has confidence 0.7 and exactly 70% are right.
    n = 1000
    y_pred = np.zeros(n, dtype=int)
    y = np.where(np.arange(n) < 700, 0, 1)
    p = np.tile([0.7, 0.3], (n, 1))
    assert (p.argmax(axis=1) == y_pred).all()
    assert expected_calibration_error(y, p) == pytest.approx(0.0, abs=1e-12)
    table = reliability_table(y, p)
    assert list(table.columns[:1]) == ["bin"]
    assert {"confidence", "accuracy", "count"} <= set(table.columns)
    assert len(table) == 15 and table["count"].sum() == n
    row = table[table["count"] > 0].iloc[0]
    assert row["confidence"] == pytest.approx(0.7) and row["accuracy"] == pytest.approx(0.7)


def test_bootstrap_ci_contains_point_and_is_deterministic(data):
    y, p = data
    pred = p.argmax(axis=1)
    for metric, point in (
        ("accuracy", accuracy_score(y, pred)),
        ("balanced_accuracy", balanced_accuracy_score(y, pred)),
    ):
        lo, hi = bootstrap_ci(y, pred, metric, n_boot=500, seed=3)
        assert lo <= point <= hi
        assert 0 < hi - lo < 0.2
        assert (lo, hi) == bootstrap_ci(y, pred, metric, n_boot=500, seed=3)


def test_bootstrap_vectorised_matches_callable(data):
    y, p = data
    pred = p.argmax(axis=1)
    fast = bootstrap_ci(y, pred, "accuracy", n_boot=100, seed=5)
    slow = bootstrap_ci(y, pred, lambda t, s: float(np.mean(t == s)), n_boot=100, seed=5)
    assert fast == pytest.approx(slow)
    # Callables may take scores instead of labels, e.g. macro AUC on probabilities.
    lo, hi = bootstrap_ci(
        y, p, lambda t, s: roc_auc_score(t, s, multi_class="ovr", labels=range(K)), n_boot=20
    )
    assert 0.5 < lo <= hi <= 1.0


def test_auc_handles_ties_like_sklearn():
    rng = np.random.default_rng(4)
    y = rng.integers(0, 3, size=200)
    # Few distinct probability rows: many tied scores per class.
    rows = np.array([[0.6, 0.2, 0.2], [0.2, 0.6, 0.2], [0.2, 0.2, 0.6], [0.4, 0.4, 0.2]])
    p = rows[np.where(rng.random(200) < 0.6, y, rng.integers(0, 4, size=200))]
    m = evaluate(y, p, ["a", "b", "c"], n_boot=0)
    for c, name in enumerate("abc"):
        assert m["per_class"][name]["auc"] == pytest.approx(roc_auc_score(y == c, p[:, c]))


def test_temperature_recovers_known_value(overconfident):
    z, y = overconfident
    t = fit_temperature(z, y)
    assert t == pytest.approx(2.5, abs=0.15)


def test_temperature_scaling_reduces_ece(overconfident):
    z, y = overconfident
    t = fit_temperature(z[:10_000], y[:10_000])  # fit on "validation", check on the rest
    before = expected_calibration_error(y[10_000:], softmax(z[10_000:]))
    after = expected_calibration_error(y[10_000:], softmax(z[10_000:], temperature=t))
    assert after < before / 3
    # Argmax, hence accuracy, is unchanged by a temperature.
    assert (softmax(z, t).argmax(1) == z.argmax(1)).all()


def test_softmax_and_logits_from_proba():
    z = np.array([[1000.0, 0.0, -1000.0], [1.0, 2.0, 3.0]])
    p = softmax(z)
    assert np.isfinite(p).all()
    np.testing.assert_allclose(p.sum(axis=1), 1.0)
    np.testing.assert_allclose(softmax(logits_from_proba(p[1:])), p[1:], rtol=1e-6)
    # Temperature round trip through probabilities-only models.
    np.testing.assert_allclose(softmax(logits_from_proba(p[1:]), 2.0), softmax(z[1:], 2.0))
    assert np.isfinite(logits_from_proba(np.array([[1.0, 0.0]]))).all()
    with pytest.raises(ValueError):
        softmax(z, temperature=0)


def test_log_average_is_a_product_of_experts():
    # View 1 is sure of class 0, view 2 finds class 0 unlikely; both give class 1 weight.
    a = np.array([[0.80, 0.18, 0.02]])
    b = np.array([[0.02, 0.55, 0.43]])
    combined = log_average([a, b])
    np.testing.assert_allclose(combined.sum(axis=1), 1.0)
    assert combined.argmax() == 1  # the class both views allow wins ...
    assert ((a + b) / 2).argmax() == 0  # ... where the arithmetic mean keeps one view's pick
    # Normalised geometric mean: proportional to sqrt(a * b).
    expected = np.sqrt(a * b) / np.sqrt(a * b).sum()
    np.testing.assert_allclose(combined, expected, rtol=1e-6)
    np.testing.assert_allclose(log_average([b]), b, rtol=1e-6)  # one view: unchanged
    assert np.isfinite(log_average([np.array([[1.0, 0.0]]), np.array([[0.0, 1.0]])])).all()
    with pytest.raises(ValueError, match="at least one"):
        log_average([])


def test_missing_classes_are_robust_and_quiet():
    rng = np.random.default_rng(2)
    y = rng.choice([0, 1, 2, 4, 5, 6], size=300)  # ig (3) and platelet (7) absent
    p = _noisy_proba(y, K, strength=1.5, seed=3)
    p[:, 7] = 0.0  # platelet: absent and never predicted
    p /= p.sum(axis=1, keepdims=True)
    p[:5] = np.eye(K)[3]  # a few predictions of the absent class "ig"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        m = evaluate(y, p, CLASSES, n_boot=200)
        table = per_class_table(m)
    ig, platelet = m["per_class"]["ig"], m["per_class"]["platelet"]
    assert ig["support"] == 0 and platelet["support"] == 0
    assert ig["sensitivity"] is None and ig["auc"] is None
    assert ig["precision"] == 0.0 and ig["f1"] == 0.0  # predicted but never right
    assert platelet["precision"] is None and platelet["f1"] is None
    assert platelet["specificity"] is not None
    pred = p.argmax(axis=1)
    with warnings.catch_warnings():  # sklearn itself warns that "ig" is predicted but absent
        warnings.simplefilter("ignore")
        reference = balanced_accuracy_score(y, pred)
    assert m["balanced_accuracy"] == pytest.approx(reference)
    assert m["macro_f1"] == pytest.approx(f1_score(y, pred, average="macro", zero_division=0))
    assert m["macro_auc"] is not None
    assert table.loc["ig", "support"] == 0 and np.isnan(table.loc["ig", "sensitivity"])
    json.loads(json.dumps(m, allow_nan=False))


def test_single_class_edge_case():
    m = evaluate(np.zeros(4, dtype=int), np.ones(4), ["only"], n_boot=20)
    assert m["accuracy"] == 1.0 and m["balanced_accuracy"] == 1.0
    assert m["macro_auc"] is None
    assert m["per_class"]["only"]["specificity"] is None
    assert m["confusion"] == [[4]]
    json.dumps(m, allow_nan=False)
    # Only one class present among several.
    m = evaluate(np.zeros(3, dtype=int), np.tile([0.9, 0.1], (3, 1)), ["a", "b"], n_boot=0)
    assert m["accuracy_ci95"] is None and m["macro_auc"] is None
    json.dumps(m, allow_nan=False)


def test_result_is_json_serialisable(data):
    y, p = data
    m = evaluate(y, p, CLASSES, n_boot=50)
    back = json.loads(json.dumps(m, allow_nan=False))
    assert back["per_class"].keys() == set(CLASSES)
    assert len(back["accuracy_ci95"]) == 2
    expected_keys = {
        "n", "accuracy", "balanced_accuracy", "accuracy_ci95", "balanced_accuracy_ci95",
        "macro_f1", "macro_auc", "per_class", "confusion", "ece", "nll", "brier",
    }  # fmt: skip
    assert expected_keys <= back.keys()


def test_input_validation():
    with pytest.raises(ValueError, match="logits"):
        evaluate([0, 1], np.array([[3.0, -1.0], [0.0, 2.0]]), ["a", "b"])
    with pytest.raises(ValueError):
        evaluate([0, 1], np.full((2, 3), 1 / 3), ["a", "b"])
    with pytest.raises(ValueError):
        evaluate([0, 5], np.full((2, 2), 0.5), ["a", "b"])


def test_per_class_table(data):
    y, p = data
    table = per_class_table(evaluate(y, p, CLASSES, n_boot=0))
    assert list(table.index) == list(CLASSES)
    assert list(table.columns) == [
        "precision",
        "sensitivity",
        "specificity",
        "f1",
        "auc",
        "support",
    ]
    assert table["support"].sum() == len(y)


def test_comparison_table():
    models = [
        {"name": "VGG16 + SVM", "backbone": "vgg16", "method": "svm", "test_accuracy": 0.88,
         "balanced_accuracy": 0.87, "accuracy_ci95": [0.86, 0.9]},
        {"name": "ViT", "backbone": "vit", "method": "finetune", "test_accuracy": 0.97,
         "balanced_accuracy": 0.96},
    ]  # fmt: skip
    table = comparison_table(models, paper.ACCURACY)
    assert len(table) == 2
    assert list(table.columns[:5]) == [
        "name", "backbone", "method", "test_accuracy", "balanced_accuracy",
    ]  # fmt: skip
    assert table.loc[0, "paper"] == 0.86
    assert np.isnan(table.loc[1, "paper"])
    assert table.loc[0, "delta_vs_paper"] == pytest.approx(0.02)
    assert table.loc[0, "ci_lo"] == 0.86
    assert "paper" not in comparison_table(models, None).columns
    assert "paper" not in comparison_table(models[1:], paper.ACCURACY).columns
    # String keys (model names) work too.
    assert comparison_table(models[1:], {"ViT": 0.9}).loc[0, "paper"] == 0.9


def test_paper_results():
    assert paper.ACCURACY[("vgg16", "finetune")] == 0.962
    assert len(paper.ACCURACY) == 4


def test_shared_mistakes_count_the_seeds_that_get_each_cell_wrong():
    """Three networks on four cells: a cell all three miss comes first, a cell one misses is
    listed with that network's answer though the average gets it right, a cell none misses
    is not listed."""
    y = np.array([0, 1, 2, 1])
    a = np.array([[0.2, 0.7, 0.1], [0.1, 0.8, 0.1], [0.6, 0.1, 0.3], [0.1, 0.9, 0.0]])
    b = np.array([[0.3, 0.6, 0.1], [0.1, 0.8, 0.1], [0.1, 0.1, 0.8], [0.1, 0.9, 0.0]])
    c = np.array([[0.1, 0.2, 0.7], [0.2, 0.7, 0.1], [0.1, 0.2, 0.7], [0.1, 0.9, 0.0]])
    paths = [f"img{i}.jpg" for i in range(4)]
    df = shared_mistakes(y, [a, b, c], paths, ["x", "y", "z"])
    assert list(df["path"]) == ["img0.jpg", "img2.jpg"]
    assert list(df["n_wrong"]) == [3, 1] and set(df["n_models"]) == {3}
    # img0: two networks say y, one says z: y, with the mean probabilities.
    assert df.loc[0, "pred"] == "y" and df.loc[0, "true"] == "x"
    assert df.loc[0, "confidence"] == pytest.approx(0.5) and df.loc[0, "p_true"] == pytest.approx(
        0.2
    )
    # img2: only network a misses it (says x); the average (z 0.6) gets it right.
    assert df.loc[1, "pred"] == "x" and df.loc[1, "p_true"] == pytest.approx(0.6)
    # One network: its own mistakes, each wrong 1 of 1.
    one = shared_mistakes(y, [a], paths, ["x", "y", "z"])
    assert list(one["path"]) == ["img0.jpg", "img2.jpg"] and set(one["n_wrong"]) == {1}
    none = shared_mistakes(y, [np.eye(3)[y]] * 2, paths, ["x", "y", "z"])
    assert none.empty and {"n_wrong", "confidence"} <= set(none.columns)
    with pytest.raises(ValueError, match="same cells"):
        shared_mistakes(y, [a, a[:3]], paths, ["x", "y", "z"])
    with pytest.raises(ValueError, match="at least one"):
        shared_mistakes(y, [], paths, ["x", "y", "z"])


def test_misclassified_sorted_by_confidence():
    y = np.array([0, 1, 2, 0, 1])
    p = np.array(
        [
            [0.9, 0.05, 0.05],  # right
            [0.6, 0.3, 0.1],  # wrong, 0.6
            [0.05, 0.9, 0.05],  # wrong, 0.9
            [0.2, 0.7, 0.1],  # wrong, 0.7
            [0.1, 0.8, 0.1],  # right
        ]
    )
    paths = [f"img{i}.jpg" for i in range(5)]
    df = misclassified(y, p.argmax(1), p, paths, ["a", "b", "c"])
    assert list(df["path"]) == ["img2.jpg", "img3.jpg", "img1.jpg"]
    assert list(df["confidence"]) == [0.9, 0.7, 0.6]
    assert df.loc[0, "true"] == "c" and df.loc[0, "pred"] == "b"
    assert df.loc[0, "p_true"] == pytest.approx(0.05)
    assert len(misclassified(y, None, p, paths, ["a", "b", "c"], limit=2)) == 2
    none = misclassified(y, y, np.eye(3)[y], paths, ["a", "b", "c"])
    assert isinstance(none, pd.DataFrame) and none.empty and "confidence" in none.columns
