"""The network that ships with bloodlib (``pbc-lite0``), made by one command.

``python -m bloodlib pretrain --data PBC_FOLDER`` fine-tunes EfficientNet-Lite0 with the
``full`` profile's recipe (notebook 03's parameters, as ``run --profile full`` gives them) on
a split of the data made as notebook 01 makes it, with one change: the originals of the
embedded sample's *test* cells (the classroom split, ``data/sample.csv``) are moved into the
test split, so the shipped model never learnt from the cells that ``make run`` and a class
score it on. It is scored on the whole test split, and its sidecar records the data, the
split, the seed, the commit and that score (``published``) and, in ``trained_on``, the
sample's copies of the cells it learnt from too, so that ``classify pbc-lite0 data/sample``
scores only the cells it never saw.

The result is written to ``bloodlib/models/shipped/<name>.keras`` (with its sidecar); the
training folder (resumable) stays in ``runs/``.
"""

from __future__ import annotations

import os
from dataclasses import fields
from pathlib import Path
from typing import Any

import pandas as pd

from bloodlib.core.config import SAMPLE_DIR
from bloodlib.data import manifest, source, split
from bloodlib.data.sample import copies_of, source_of
from bloodlib.models.pretrained import SHIPPED_DIR
from bloodlib.models.saved import open_model, read_sidecar, save_classifier, update_sidecar
from bloodlib.study import provenance, scoring
from bloodlib.study.planning import plan_study
from bloodlib.study.profiles import RunError
from bloodlib.train.finetune import train
from bloodlib.train.recipe import FinetuneConfig

#: The profile whose recipe the shipped network is trained with.
PROFILE = "full"

#: How its weights are stored: float16 halves the package's largest file.
STORAGE = "float16"


def notebook_parameters(profile: str, data: str, notebook: str) -> dict[str, Any]:
    """What a run of ``profile`` gives ``notebook``: its profile values over its defaults."""
    plan = next(p for p in plan_study(profile, data) if p.name == notebook)
    return {**plan.defaults, **plan.parameters}


def recipe(data: str) -> tuple[FinetuneConfig, dict[str, Any]]:
    """The ``full`` profile's fine-tuning configuration and split parameters, exactly as a
    run of that profile would give notebooks 01 and 03 (profile over notebook defaults)."""
    nb03 = notebook_parameters(PROFILE, data, "03_fine_tuning")
    nb01 = notebook_parameters(PROFILE, data, "01_data_exploration")
    known = {f.name for f in fields(FinetuneConfig)}
    cfg = FinetuneConfig(
        **{k: v for k, v in nb03.items() if k in known and k not in ("backbone", "weights")},
        backbone=nb03["backbones"][0],
    )
    return cfg, {"fractions": tuple(nb01["split_fractions"]), "seed": int(nb01["seed"])}


def classroom_test_sources() -> set[str]:
    """Content hashes of the originals of the embedded sample's test cells (the split
    ``make run`` scores on: the sample's scan, split with the ``sample`` profile's fractions
    and seed, whatever the profile the shipped network is trained with)."""
    nb01 = notebook_parameters("sample", "sample", "01_data_exploration")
    table = manifest.scan(SAMPLE_DIR, progress=False)
    classroom = split.make_split(
        table, fractions=tuple(nb01["split_fractions"]), seed=int(nb01["seed"])
    )
    test = classroom[classroom["split"] == "test"]
    return {h for h in source_of(test["sha256"]) if h}


def pretrain(
    data: str | os.PathLike,
    name: str = "pbc-lite0",
    runs_root: str | os.PathLike = "runs",
    *,
    verbose: int = 2,
) -> Path:
    """Train, score and publish the shipped network; returns its path in the package."""
    spec = os.fspath(data)
    if source.is_sample(spec):
        raise RunError(
            "pretrain trains on a PBC folder (the dev data or the release), not the sample"
        )
    cfg, split_params = recipe(spec)
    root = source.resolve(spec)
    table = manifest.scan(root, progress=verbose > 0)
    frame = split.make_split(table, **split_params)
    frame = split.hold_out(frame, classroom_test_sources())
    split.check_split(frame)
    run_dir = Path(runs_root) / f"pretrain-{name}"
    split.save_split(frame, run_dir / "split.csv")
    part = frame["split"]
    result = train(
        cfg, frame[part == "train"], frame[part == "val"], run_dir, name, verbose=verbose
    )
    return publish(result.model_path, name, frame, spec, table, split_params)


def publish(
    model_path: Path,
    name: str,
    frame: pd.DataFrame,
    data: str,
    table: manifest.Manifest,
    split_params: dict[str, Any],
    *,
    shipped_dir: Path = SHIPPED_DIR,
) -> Path:
    """Copy the trained network into the package with what a user must know about it, and
    score the copy (the bytes that ship) on ``frame``'s test split."""
    git = provenance.git_info()  # before the package changes: writing into it dirties the tree
    shipped_dir.mkdir(parents=True, exist_ok=True)
    out = shipped_dir / f"{name}.keras"
    # Loaded uncompiled, the network is written without its optimizer's state (41 MB -> 14 MB
    # for Lite0), its weights stored as float16 (-> 6.4 MB): the package stays small.
    trained = open_model(model_path)
    save_classifier(trained.model, out, trained.info, storage=STORAGE)
    seed = int(split_params["seed"])
    metrics = scoring.evaluate_model(out, frame, n_boot=1000, seed=seed).metrics
    record = read_sidecar(out)["trained_on"]
    learnt = frame.loc[frame["split"] != "test", "sha256"]
    copies = [h for h in copies_of(learnt) if h]
    trained_on = {
        **record,
        "cells": sorted({*record["cells"], *(h[: split.TRAINED_ON_DIGITS] for h in copies)}),
    }
    counts = frame["split"].value_counts().to_dict()
    update_sidecar(
        out,
        name=name,
        trained_on=trained_on,
        published={
            "command": f"python -m bloodlib pretrain --data {data} --name {name}",
            "profile": PROFILE,
            "data": source.describe(data),
            "manifest_sha256": table.content_hash(),
            "split": {**split_params, **{k: int(v) for k, v in counts.items()}},
            "held_out": "the embedded sample's test cells (their originals) are in the test split",
            "sample_copies_in_trained_on": len(copies),
            "commit": git.get("commit"),
            "dirty": git.get("dirty"),
            "dev_test": {
                k: metrics[k]
                for k in (
                    "test_accuracy",
                    "accuracy_ci95",
                    "balanced_accuracy",
                    "macro_f1",
                    "n_test",
                )
            },
        },
    )
    return out
