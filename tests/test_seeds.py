"""Spread over training seeds (issue 11, item 4): the seed list, model names, the spread in
metrics.json, the SVM per seed, and the runner's rule and summary."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
from sklearn.datasets import make_blobs

from bloodlib import CLASSES, evaluate
from bloodlib.core import config
from bloodlib.evaluate import seeds
from bloodlib.models.saved import read_sidecar
from bloodlib.study import parameters, planning, profiles, runner, scoring
from bloodlib.study.profiles import ParameterError
from bloodlib.teach import narrative
from bloodlib.train import design1

pytestmark = pytest.mark.unit


# ----------------------------------------------------------------------------- config


def test_training_seeds_count_up_from_the_split_seed():
    assert config.training_seeds(42, 1) == [42]
    assert config.training_seeds(42, 3) == [42, 43, 44]
    assert config.training_seeds(0, 2) == [0, 1]


@pytest.mark.parametrize("n", [0, -1, 1.5, True, "3"])
def test_training_seeds_refuse_what_is_not_a_count(n):
    with pytest.raises(ValueError, match="n_seeds=1"):
        config.training_seeds(42, n)


def test_first_seed_keeps_the_name_others_get_a_suffix():
    names = [config.seed_model_name("lite0_finetune", s, 42) for s in (42, 43, 44)]
    assert names == ["lite0_finetune", "lite0_finetune_seed43", "lite0_finetune_seed44"]
    for name, seed in zip(names, (None, 43, 44), strict=True):
        assert config.split_seed_name(name) == ("lite0_finetune", seed)
    # Names that only look similar are first-seed names.
    assert config.split_seed_name("a_seedling") == ("a_seedling", None)
    assert config.split_seed_name("_seed3") == ("_seed3", None)


# ----------------------------------------------------------------------------- scoring


def _entry(name, seed, acc, bal=None, *, backbone="lite0", method="finetune", tta=False, ci=None):
    return {
        "name": name,
        "backbone": backbone,
        "method": method,
        "tta": tta,
        "seed": seed,
        "test_accuracy": acc,
        "balanced_accuracy": acc if bal is None else bal,
        "accuracy_ci95": ci,
    }


def test_seed_spread_groups_by_backbone_method_and_tta_in_first_seen_order():
    entries = [
        _entry("lite0_svm", 42, 0.89, method="svm"),
        _entry("lite0_finetune", 42, 0.97, 0.96),
        _entry("lite0_finetune_tta", 42, 0.975, tta=True),
        _entry("lite0_finetune_seed43", 43, 0.96, 0.95),
        _entry("lite0_finetune_seed43_tta", 43, 0.97, tta=True),
        _entry("lite0_finetune_seed44", 44, 0.95, 0.91),
        _entry("lite0_finetune_seed44_tta", 44, 0.965, tta=True),
    ]
    spread = evaluate.seed_spread(entries)
    assert [(r["name"], r["n_seeds"]) for r in spread] == [
        ("lite0_svm", 1),
        ("lite0_finetune", 3),
        ("lite0_finetune_tta", 3),
    ]
    assert all(tuple(r) == seeds.SPREAD_KEYS for r in spread)
    svm, net, tta = spread
    assert svm["accuracy_std"] is None and svm["balanced_accuracy_std"] is None
    assert svm["accuracy_mean"] == pytest.approx(0.89)
    assert net["seeds"] == [42, 43, 44] and net["tta"] is False and tta["tta"] is True
    assert net["accuracy_mean"] == pytest.approx(0.96)
    assert net["accuracy_std"] == pytest.approx(0.01)  # ddof=1: sqrt((1e-4 + 0 + 1e-4) / 2)
    assert net["balanced_accuracy_mean"] == pytest.approx(0.94)
    assert net["balanced_accuracy_std"] == pytest.approx(np.std([0.96, 0.95, 0.91], ddof=1))
    json.dumps(spread)  # plain JSON types: it goes into metrics.json as it is


def test_seed_spread_refuses_a_seed_counted_twice():
    with pytest.raises(ValueError, match="repeat"):
        evaluate.seed_spread([_entry("a", 42, 0.9), _entry("a_seed42", 42, 0.9)])


def test_seed_models_keep_this_runs_seeds_only(tmp_path):
    names = ["a_finetune", "a_finetune_seed43", "a_finetune_seed44", "a_finetune_seed45", "a_svm"]
    paths = [tmp_path / f"{n}.keras" for n in names]
    first, others = scoring.seed_models(paths, 42, 3)
    assert [p.stem for p in first] == ["a_finetune", "a_svm"]
    # seed45 was left by an earlier run with four seeds: not this run's.
    assert [p.stem for p in others] == ["a_finetune_seed43", "a_finetune_seed44"]
    assert scoring.seed_models(paths, 42, 1) == (first, [])


def test_model_seed_reads_either_sidecar_shape():
    assert scoring.model_seed({"seed": 43}) == 43
    assert scoring.model_seed({"config": {"seed": 44}}) == 44
    assert scoring.model_seed({"name": "old"}) is None


def test_seed_table_sets_the_spread_beside_the_first_seeds_interval():
    entries = [
        _entry("n", 42, 0.97, ci=[0.95, 0.99]),
        _entry("n_seed43", 43, 0.95),
    ]
    table = evaluate.seed_table(evaluate.seed_spread(entries), entries)
    assert list(table.columns) == list(seeds.SEED_TABLE_COLUMNS)
    row = table.iloc[0]
    assert row["seeds"] == "42, 43" and row["n_seeds"] == 2
    assert row["ci_width"] == pytest.approx(0.04)
    assert row["accuracy_std"] == pytest.approx(np.std([0.97, 0.95], ddof=1))


@pytest.mark.parametrize(
    ("accs", "words"),
    [
        ([0.970, 0.965, 0.975], "much narrower"),  # 4 std = 2 points vs a 10-point interval
        ([0.97, 0.93, 0.95], "comparable"),  # 4 std = 8 points
        ([0.99, 0.90, 0.80], "wider than that"),  # 4 std = 38 points
        ([0.97, 0.97, 0.97], "the seed made no difference"),
    ],
)
def test_seed_sentence_compares_the_seed_spread_with_the_interval(accs, words):
    entries = [
        _entry(f"n_seed{s}" if s != 42 else "n", s, a, ci=[0.92, 1.0] if s == 42 else None)
        for s, a in zip((42, 43, 44), accs, strict=True)
    ]
    row = evaluate.seed_spread(entries)[0]
    text = narrative.seed_sentence(row, entries)
    assert words in text
    assert f"from {100 * min(accs):.1f} % to {100 * max(accs):.1f} %" in text
    if "no difference" not in words:
        assert "8.0 points wide" in text


def test_seed_sentence_with_one_seed_says_how_to_run_several():
    entries = [_entry("n", 42, 0.97, ci=[0.95, 0.99])]
    text = narrative.seed_sentence(evaluate.seed_spread(entries)[0], entries)
    assert "-p n_seeds=3" in text and "one training seed" in text


# ----------------------------------------------------------------------------- SVM per seed


@pytest.fixture(scope="module")
def svm_runs(tmp_path_factory):
    X, y = make_blobs(n_samples=160, centers=8, n_features=12, cluster_std=4.0, random_state=1)
    parts = np.array(["train"] * 10 + ["val"] * 4 + ["test"] * 6)
    split = pd.DataFrame(
        {
            "path": [f"/cells/{i}.jpg" for i in range(len(y))],
            "sha256": [f"{i:064x}" for i in range(len(y))],
            "label": [CLASSES[k] for k in y],
            "split": [parts[i] for i in pd.Series(y).groupby(y).cumcount()],
        }
    )
    fs = SimpleNamespace(features=X.astype(np.float32), key="k" * 16, from_cache=True)
    run = tmp_path_factory.mktemp("run")
    grid = [{"svc__kernel": ["linear"], "svc__C": [0.01, 1.0]}]
    return {
        s: design1.fit_and_save(
            "efficientnet_lite0",
            fs,
            split,
            run,
            image_size=64,
            cv=3,
            seed=s,
            grid=grid,
            n_jobs=1,
            name=config.seed_model_name("efficientnet_lite0_svm", s, 42),
        )
        for s in config.training_seeds(42, 3)
    }


def test_svm_per_seed_is_saved_under_its_name_with_its_seed(svm_runs):
    names = [r.model_path.name for r in svm_runs.values()]
    assert names == [
        "efficientnet_lite0_svm.skops",
        "efficientnet_lite0_svm_seed43.skops",
        "efficientnet_lite0_svm_seed44.skops",
    ]
    for s, r in svm_runs.items():
        info = read_sidecar(r.model_path)
        assert info["name"] == r.name == r.model_path.stem
        assert info["seed"] == s and scoring.model_seed(info) == s


def test_svm_seed_table_and_sentence_come_from_the_fits(svm_runs):
    table = design1.seed_table(svm_runs)
    assert list(table.columns) == list(design1.SEED_COLUMNS)
    assert table["seed"].tolist() == [42, 43, 44]
    assert table["test_accuracy"].tolist() == [r.test_accuracy for r in svm_runs.values()]
    text = narrative.svm_seed_sentence(table)
    std = np.std(table["test_accuracy"], ddof=1)
    assert f"standard deviation of {100 * std:.2f} points" in text
    if table["test_accuracy"].nunique() == 1 and table["C"].nunique() == 1:
        assert "changed neither the chosen setting nor the test accuracy" in text
    else:
        assert "changed neither" not in text
    assert "-p n_seeds=3" in narrative.svm_seed_sentence(table.iloc[:1])


def test_svm_seed_sentence_says_when_the_seed_changed_nothing():
    table = pd.DataFrame(
        {
            "seed": [42, 43],
            "name": ["s", "s_seed43"],
            "kernel": ["linear"] * 2,
            "C": [0.01] * 2,
            "cv_accuracy": [0.9, 0.91],
            "test_accuracy": [0.9, 0.9],
            "balanced_accuracy": [0.88, 0.88],
        }
    )
    text = narrative.svm_seed_sentence(table)
    assert "same kernel and C for every seed" in text and "changed neither" in text
    table.loc[1, ["C", "test_accuracy"]] = [1.0, 0.92]
    text = narrative.svm_seed_sentence(table)
    assert "2 different settings" in text and "changed neither" not in text


# ----------------------------------------------------------------------------- runner


def test_n_seeds_rule_and_profiles():
    parameters.check_parameter("nb", "n_seeds", 3, default=1, has_default=True)
    with pytest.raises(ParameterError, match="n_seeds"):
        parameters.check_parameter("nb", "n_seeds", 0, default=1, has_default=True)
    for name, profile in profiles.load_profiles().items():
        assert profile["common"]["n_seeds"] >= 1, name


def test_notebooks_02_to_04_declare_n_seeds():
    declared = {p.stem: planning.notebook_defaults(p) for p in planning.find_notebooks()}
    for stem in ("02_feature_extraction_svm", "03_fine_tuning", "04_evaluation"):
        assert declared[stem]["n_seeds"] == 1, stem


def test_spread_table_shows_only_models_trained_with_several_seeds(tmp_path: Path):
    assert runner.spread_table(tmp_path) is None
    entries = [
        _entry("n", 42, 0.97),
        _entry("n_seed43", 43, 0.95),
        _entry("s", 42, 0.9, method="svm"),
    ]
    shared = [{"name": "n", "n_models": 2, "wrong_for_every_seed": 7}]
    (tmp_path / "metrics.json").write_text(
        json.dumps(
            {
                "models": entries,
                "seed_spread": evaluate.seed_spread(entries),
                "seed_mistakes": shared,
            }
        )
    )
    lines = runner.spread_table(tmp_path).splitlines()
    assert lines[0].split()[:3] == ["name", "n_seeds", "seeds"]
    assert lines[0].split()[-1] == "wrong_for_every_seed"
    assert len(lines) == 3 and lines[2].split()[:3] == ["n", "2", "42,43"]
    assert lines[2].split()[-1] == "7"
    assert runner.results_table(tmp_path).splitlines()[0].split()[0] == "name"


def test_seed_sentences_one_for_the_run_when_nothing_repeated():
    entries = [_entry("s", 42, 0.9, method="svm"), _entry("n", 42, 0.97, ci=[0.95, 0.99])]
    (text,) = narrative.seed_sentences(evaluate.seed_spread(entries), entries)
    assert "one seed (42)" in text and "-p n_seeds=3" in text
    entries.append(_entry("n_seed43", 43, 0.96))
    texts = narrative.seed_sentences(evaluate.seed_spread(entries), entries)
    assert len(texts) == 1 and texts[0].startswith("**n** over 2 training seeds (42, 43)")


def test_seed_figure_draws_one_column_per_model():
    import matplotlib

    matplotlib.use("Agg")
    from bloodlib.teach.plots import plot_seed_spread

    entries = [
        _entry("n", 42, 0.97, ci=[0.95, 0.99]),
        _entry("n_seed43", 43, 0.95),
        _entry("s", 42, 0.9, method="svm", ci=[0.85, 0.94]),
    ]
    fig = plot_seed_spread(entries, evaluate.seed_spread(entries))
    ax = fig.axes[0]
    assert [t.get_text().split("\n")[0] for t in ax.get_xticklabels()] == ["n", "s"]
    labels = [t.get_text() for t in fig.legends[0].get_texts()]
    assert labels.count("first seed (42)") == 1 and "another training seed" in labels


def test_seed_group_pools_a_models_seeds_but_never_two_recipes():
    def entry(stem, seed, acc, tta=False):
        name = stem + ("_tta" if tta else "")
        return {**_entry(name, seed, acc, tta=tta), "model_path": f"models/{stem}.keras"}

    entries = [
        entry("lite0_finetune", 42, 0.97),
        entry("lite0_finetune", 42, 0.98, tta=True),
        entry("lite0_robust", 42, 0.95),  # notebook 05's network: same backbone and method
        entry("lite0_finetune_seed43", 43, 0.96),
        entry("lite0_finetune_seed43", 43, 0.97, tta=True),
    ]
    assert evaluate.seed_group(entries[3]) == ("lite0_finetune", False)
    assert evaluate.seed_group(entries[4]) == ("lite0_finetune", True)
    spread = evaluate.seed_spread(entries)
    assert [(r["model"], r["tta"], r["seeds"]) for r in spread] == [
        ("lite0_finetune", False, [42, 43]),
        ("lite0_finetune", True, [42, 43]),
        ("lite0_robust", False, [42]),
    ]
    assert [e["name"] for e in evaluate.seed_members(entries, spread[1])] == [
        "lite0_finetune_tta",
        "lite0_finetune_seed43_tta",
    ]
