"""ensemble: several fine-tuned networks averaged into one safe, hash-checked model."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tiny_models

from bloodlib import CLASSES, evaluate
from bloodlib.cli import main
from bloodlib.core.errors import OutputPathError
from bloodlib.core.hashing import sha256_file
from bloodlib.models.ensemble import EnsembleError, build_ensemble, seed_ensemble
from bloodlib.models.saved import read_sidecar, save_classifier
from bloodlib.predict.engine import load_classifier
from bloodlib.teach import versus_paper
from bloodlib.train.adapt import adapt
from bloodlib.train.few_shot import AdaptError

pytestmark = pytest.mark.unit

SIZE = tiny_models.SIZE
INFO = {"method": "finetune", "backbone": "tiny", "classes": list(CLASSES), "image_size": SIZE}


def member(tmp_path: Path, name: str, scale: float, seed: int, seconds: float, **info) -> Path:
    """The vertex classifier with its head sharpened or softened by ``scale``: members that
    agree on the class but not on the probabilities, so an average is not any one of them."""
    model = tiny_models.vertex_classifier(SIZE)
    head = model.get_layer("head")
    head.set_weights([w * scale for w in head.get_weights()])
    sidecar = {
        **INFO,
        "name": name,
        "config": {"seed": seed, "epochs_head": 2, "epochs_finetune": 3, "label_smoothing": 0.25},
        "metrics": {"train_seconds": seconds},
        "temperature": 0.5,
        **info,
    }
    return save_classifier(model, tmp_path / "models" / f"{name}.keras", sidecar)


@pytest.fixture
def members(tmp_path) -> list[Path]:
    return [
        member(tmp_path, "m", 1.0, 42, 60.0),
        member(tmp_path, "m_seed43", 0.05, 43, 70.0),
        member(tmp_path, "m_seed44", 0.2, 44, 80.0),
    ]


@pytest.fixture
def cells(tmp_path) -> list[str]:
    return [
        str(
            tiny_models.write_cell(
                tmp_path / "lab" / CLASSES[c] / f"{c}_{i}.jpg", c, seed=10 * c + i
            )
        )
        for c in range(8)
        for i in range(2)
    ]


def test_ensemble_answers_the_mean_of_its_members(members, cells, tmp_path):
    out = tmp_path / "ens" / "mean.keras"
    result = build_ensemble(members, out)
    assert result.model_path == out and out.is_file()
    each = [
        load_classifier(p).predict_proba(cells, progress=False, engine="keras") for p in members
    ]
    assert not np.allclose(each[0], each[1], atol=1e-3)  # the members really differ
    ens = load_classifier(out)  # loads like any model: sidecar bound, Keras safe mode
    got = ens.predict_proba(cells, progress=False, engine="keras")
    np.testing.assert_allclose(got, np.mean(each, axis=0), atol=1e-5)
    # With test-time augmentation too: the mean over views of the mean over members.
    each_tta = [
        load_classifier(p).predict_proba(cells, progress=False, engine="keras", tta=True)
        for p in members
    ]
    got_tta = ens.predict_proba(cells, progress=False, engine="keras", tta=True)
    np.testing.assert_allclose(got_tta, np.mean(each_tta, axis=0), atol=1e-5)


def test_sidecar_records_the_members_and_their_cost(members, tmp_path):
    out = build_ensemble(members, tmp_path / "ens.keras").model_path
    info = read_sidecar(out)
    recorded = info["ensemble"]["members"]
    assert [m["name"] for m in recorded] == ["m", "m_seed43", "m_seed44"]
    assert [m["seed"] for m in recorded] == [42, 43, 44]
    assert [m["model_sha256"] for m in recorded] == [sha256_file(p) for p in members]
    assert info["metrics"]["train_seconds"] == pytest.approx(210.0)
    # A member's temperature was fitted on its own outputs, not the average's.
    assert "temperature" not in info and "config" not in info
    assert info["classes"] == list(CLASSES) and info["name"] == "ens"


def test_refuses_what_cannot_be_averaged(members, tmp_path):
    with pytest.raises(EnsembleError, match="at least two"):
        build_ensemble(members[:1], tmp_path / "one.keras")
    with pytest.raises(EnsembleError, match="same network"):
        build_ensemble([members[0], members[0]], tmp_path / "twice.keras")
    other = member(tmp_path, "reordered", 1.0, 45, 1.0, classes=list(reversed(CLASSES)))
    with pytest.raises(EnsembleError, match="'classes'"):
        build_ensemble([members[0], other], tmp_path / "mixed.keras")
    ens = build_ensemble(members[:2], tmp_path / "pair.keras").model_path
    with pytest.raises(EnsembleError, match="itself an ensemble"):
        build_ensemble([ens, members[2]], tmp_path / "nested.keras")
    assert not (tmp_path / "mixed.keras").exists() and not (tmp_path / "nested.keras").exists()


def test_never_overwrites_a_member(members, tmp_path):
    before = sha256_file(members[1])
    for out in (members[1], tmp_path / "models" / ".." / "models" / "m_seed43.keras"):
        with pytest.raises(OutputPathError, match="overwrite the member"):
            build_ensemble(members, out)
    for out in (members[1].with_suffix(".json"), tmp_path / "ens.h5"):
        with pytest.raises(OutputPathError, match="saved as a .keras file"):
            build_ensemble(members, out)
    assert sha256_file(members[1]) == before


def test_a_tampered_member_is_refused(members, tmp_path):
    side = members[2].with_suffix(".json")
    info = json.loads(side.read_text())
    info["classes"] = list(reversed(info["classes"]))
    side.write_text(json.dumps(info))
    with pytest.raises(Exception, match="edited after the model was saved"):
        build_ensemble(members, tmp_path / "ens.keras")


def test_adapt_refuses_an_ensemble(members, tmp_path):
    ens = build_ensemble(members, tmp_path / "ens.keras").model_path
    lab = tmp_path / "lab"
    for c in range(2):
        for i in range(3):
            tiny_models.write_cell(lab / CLASSES[c] / f"{i}.jpg", c, seed=i)
    with pytest.raises(AdaptError, match="adapt each member"):
        adapt(ens, lab, tmp_path / "adapted.keras", shots=1)


def test_cli_ensemble_then_classify(members, cells, tmp_path, capsys):
    out = tmp_path / "cli" / "ens.keras"
    assert main(["ensemble", *map(str, members), "--out", str(out)]) == 0
    assert "averaged 3 networks" in capsys.readouterr().out
    csv = tmp_path / "pred.csv"
    assert main(["classify", str(out), str(tmp_path / "lab"), "--out", str(csv), "--tta"]) == 0
    rows = pd.read_csv(csv)
    assert len(rows) == len(cells) and (rows["status"] == "classified").all()
    assert {f"p_{c}" for c in CLASSES} <= set(rows.columns)
    # The vertex members are right on every colour-coded cell, and so is their average.
    truth = rows["relpath"].str.split("/").str[0]
    assert (rows["predicted"] == truth).all()
    capsys.readouterr()
    assert main(["ensemble", str(members[0]), "--out", str(tmp_path / "lone.keras")]) != 0
    assert "at least two" in capsys.readouterr().err


def test_seed_ensemble_follows_the_runs_seeds(members, tmp_path):
    out = tmp_path / "models" / "m_ensemble.keras"
    built = seed_ensemble(members, out)
    assert built is not None and len(built.members) == 3
    sha = sha256_file(out)
    # Re-running notebook 03 with the same networks keeps the file (nothing rebuilt).
    again = seed_ensemble(members, out)
    assert again is not None and sha256_file(out) == sha
    # A member retrained (new content): the ensemble is rebuilt from the new file.
    member(tmp_path, "m_seed44", 0.3, 44, 80.0)
    rebuilt = seed_ensemble(members, out)
    assert rebuilt.members[2]["model_sha256"] == sha256_file(members[2])
    assert sha256_file(out) != sha
    # Back to one seed: the ensemble of the earlier seeds is gone, sidecar and all.
    assert seed_ensemble(members[:1], out) is None
    assert not out.exists() and not out.with_suffix(".json").exists()


def test_scored_and_studied_as_an_ensemble(members, cells, tmp_path):
    from bloodlib.study import domain, scoring

    out = build_ensemble(members, tmp_path / "models" / "m_ensemble.keras").model_path
    split = pd.DataFrame(
        {
            "path": cells,
            "sha256": [sha256_file(p) for p in cells],
            "label": [Path(p).parent.name for p in cells],
            "split": ["val", "test"] * (len(cells) // 2),
        }
    )
    entry = scoring.evaluate_model(out, split, n_boot=10).metrics
    assert entry["ensemble"] == ["m", "m_seed43", "m_seed44"]
    assert entry["seed"] is None and entry["test_accuracy"] == 1.0
    assert entry["model_path"] == "models/m_ensemble.keras"
    # An average of the seeds is not one more seed: the spread over seeds leaves it out.
    members_entries = [
        dict(entry, name=f"m{s}", model_path=f"models/m{s}.keras", seed=s) for s in ("", "_seed43")
    ]
    for e in members_entries:
        e.pop("ensemble")
    spread = evaluate.seed_spread([*members_entries, entry])
    assert [(r["model"], r["n_seeds"]) for r in spread] == [("m", 2)]
    # Notebook 04's recipe table: an ensemble's is its members' (they differ in seed only).
    first = scoring.evaluate_model(members[0], split, n_boot=10)
    recipes = versus_paper.recipe_differences(
        tmp_path, [first, evaluate.Evaluation(entry, *[None] * 5)], "x"
    )
    here = {m: t["here"].tolist() for m, t in recipes.groupby("model")}
    assert here["m_ensemble"] == here["m"] and any("0.25" in str(v) for v in here["m"])
    # Notebook 05 adapts and retrains its base: it takes a member, never the average.
    with pytest.raises(ValueError, match="is an ensemble"):
        domain.base_model_path(tmp_path, "m_ensemble")
    assert domain.base_model_path(tmp_path, "m_seed43") == members[1]


def test_an_ensemble_exports_like_one_network(members, tmp_path, monkeypatch):
    from bloodlib.models import backbones
    from bloodlib.predict.export import export_model

    bb = tiny_models.backbone("tiny", tiny_models.mean_colour_builder, "none", feature_dim=3)
    monkeypatch.setitem(backbones.REGISTRY, "tiny", bb)
    ens = build_ensemble(members, tmp_path / "ens.keras").model_path
    result = export_model(ens, "tflite", tmp_path / "ens.tflite")
    assert "outputs match Keras" in result.report() and (tmp_path / "ens.tflite").is_file()


def test_notebook_05_finds_the_seed_ensemble_of_its_base(members, tmp_path):
    from bloodlib.study import domain

    assert domain.seed_ensemble_path(members[0]) is None  # a run with one seed
    out = tmp_path / "models" / "m_ensemble.keras"
    build_ensemble(members[1:], out)  # an ensemble without m: not m's seeds
    assert domain.seed_ensemble_path(members[0]) is None
    with pytest.raises(OutputPathError, match="add --force"):  # another ensemble is in the way
        build_ensemble(members, out)
    build_ensemble(members, out, force=True)
    assert domain.seed_ensemble_path(members[0]) == out
