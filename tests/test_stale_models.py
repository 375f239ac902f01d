"""A model is never scored on cells it learnt from (issues 33 and 35, finding 10).

Re-running notebook 01 with another seed or other fractions, as its own exercises ask, makes
a new split whose test cells overlap the old models' training cells. Every sidecar records
the cells its model was trained and validated on (``split.trained_on``); notebook 04's
scoring refuses such a model, and ``classify`` marks those cells and leaves them unscored.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import tiny_models

from bloodlib import CLASSES
from bloodlib.data import manifest, split
from bloodlib.models.saved import save_classifier
from bloodlib.predict.classify import classify_folder
from bloodlib.study import scoring

pytestmark = pytest.mark.unit

SIZE = tiny_models.SIZE
INFO = {"method": "finetune", "backbone": "tiny", "classes": list(CLASSES), "image_size": SIZE}
PER_CLASS = 10


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("cells") / "data"
    for c, cls in enumerate(CLASSES):
        for i in range(PER_CLASS):
            tiny_models.write_cell(root / cls / f"{i}.jpg", c, seed=100 * c + i)
    return root


def _split(folder, seed):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        table = manifest.scan(folder, progress=False, use_cache=False)
    return split.make_split(table, seed=seed)


def _model_of(tmp_path, s, name="m"):
    part = s["split"]
    info = {**INFO, "trained_on": split.trained_on(s[part == "train"], s[part == "val"])}
    return save_classifier(
        tiny_models.vertex_classifier(SIZE), tmp_path / "models" / f"{name}.keras", info
    )


def test_the_record_knows_its_cells_and_nothing_else(folder):
    s = _split(folder, seed=1)
    part = s["split"]
    record = split.trained_on(s[part == "train"], s[part == "val"])
    assert record["n_train"] + record["n_val"] == len(record["cells"]) == (part != "test").sum()
    assert split.overlap(record, s.loc[part == "test", "sha256"]) == 0
    assert split.overlap(record, s.loc[part == "val", "sha256"]) == (part == "val").sum()
    assert split.overlap({}, s["sha256"]) is None  # a model saved before the record existed


def test_re_running_notebook_01_with_another_seed_makes_the_old_model_stale(folder, tmp_path):
    old, new = _split(folder, seed=1), _split(folder, seed=2)
    model = _model_of(tmp_path, old)
    expected = split.overlap(
        split.trained_on(old[old["split"] == "train"], old[old["split"] == "val"]),
        new.loc[new["split"] == "test", "sha256"],
    )
    assert expected > 0  # the case of the issue: 135 of 200 new test cells
    with pytest.raises(scoring.StaleModelError, match=f"{expected} of the .* test cells"):
        scoring.evaluate_model(model, new, n_boot=10)
    with pytest.raises(scoring.StaleModelError):
        scoring.evaluate_models([model], new, n_boot=10)
    fresh = scoring.evaluate_model(model, old, n_boot=10)  # on its own split: scored
    assert fresh.metrics["test_cells_seen_in_training"] == 0


def test_classify_marks_the_cells_a_model_learnt_from_and_scores_the_others(folder, tmp_path):
    s = _split(folder, seed=1)
    model = _model_of(tmp_path, s)
    result = classify_folder(model, folder, tmp_path / "p.csv", progress=False, engine="keras")
    learnt = int((s["split"] != "test").sum())
    assert result.n_seen == learnt
    assert result.metrics["n"] == len(s) - learnt
    assert result.table["seen_in_training"].sum() == learnt
    assert "left out of every score" in result.report()
    test_cells = set(s.loc[s["split"] == "test", "relpath"])
    unseen = set(result.table.loc[~result.table["seen_in_training"].astype(bool), "relpath"])
    assert unseen == test_cells


def test_fine_tuning_records_what_it_learnt_from(tmp_path, monkeypatch):
    from bloodlib.models import backbones
    from bloodlib.train.finetune import train

    monkeypatch.setitem(
        backbones.REGISTRY,
        "tiny",
        tiny_models.backbone("tiny", tiny_models.convnet_builder, "none", 8),
    )
    rows = [
        {"path": str(tiny_models.write_cell(tmp_path / "c" / f"{c}_{i}.jpg", c, seed=7 * c + i)),
         "label": CLASSES[c]}
        for c in range(8) for i in range(3)
    ]  # fmt: skip
    import pandas as pd

    frame = pd.DataFrame(rows)
    train_df, val_df = (
        frame.iloc[::3].reset_index(drop=True),
        frame.iloc[1::3].reset_index(drop=True),
    )
    result = train(
        tiny_models.finetune_config(), train_df, val_df, tmp_path / "run", "t", verbose=0
    )
    from bloodlib.models.saved import read_sidecar

    record = read_sidecar(result.model_path)["trained_on"]
    assert (record["n_train"], record["n_val"]) == (len(train_df), len(val_df))
    test_df = frame.iloc[2::3]
    hashes = [
        __import__("bloodlib.core.hashing", fromlist=["x"]).sha256_file(p) for p in test_df["path"]
    ]
    assert split.overlap(record, hashes) == 0
    assert np.all(
        split.seen_mask(
            record,
            [
                __import__("bloodlib.core.hashing", fromlist=["x"]).sha256_file(p)
                for p in train_df["path"]
            ],
        )
    )
