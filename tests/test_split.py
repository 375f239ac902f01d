"""Splits: stratified, group-aware, deterministic, saved and reloaded safely."""

from __future__ import annotations

import hashlib
import warnings

import numpy as np
import pandas as pd
import pytest

from bloodlib import CLASSES
from bloodlib.data.manifest import DataQualityWarning, scan
from bloodlib.data.split import (
    SPLIT_COLUMNS,
    check_split,
    load_split,
    make_split,
    save_split,
    split_summary,
)

pytestmark = pytest.mark.unit

COUNTS = {"basophil": 121, "eosinophil": 311, "ig": 57, "monocyte": 30, "platelet": 7}


def _table(counts=COUNTS, group_sizes=None, seed=0) -> pd.DataFrame:
    """A manifest-like table; ``group_sizes`` cycles through copies-per-group."""
    rows = []
    rng = np.random.default_rng(seed)
    for label, n in counts.items():
        i = 0
        while i < n:
            size = group_sizes[rng.integers(len(group_sizes))] if group_sizes else 1
            key = hashlib.sha256(f"{label}{i}".encode()).hexdigest()
            for j in range(min(size, n - i)):
                rel = f"{label}/{label[:2].upper()}_{i + j:05d}.jpg"
                sha = hashlib.sha256(rel.encode()).hexdigest() if j else key
                rows.append(
                    {"relpath": rel, "path": f"/d/{rel}", "label": label, "sha256": sha}
                    | {"group": key, "status": "ok"}
                )
            i += size
    return pd.DataFrame(rows)


@pytest.mark.parametrize("fractions", [(0.7, 0.1, 0.2), (0.8, 0.0, 0.2), (0.6, 0.2, 0.2)])
def test_sizes_match_fractions_per_class(fractions):
    df = make_split(_table(), fractions)
    counts = split_summary(df)
    for label, n in COUNTS.items():
        for split, frac in zip(("train", "val", "test"), fractions, strict=True):
            assert abs(counts.loc[label, split] - n * frac) <= 1, (label, split)
    if fractions[1] == 0:
        assert "val" not in set(df["split"])


def test_groups_never_cross_splits():
    table = _table(group_sizes=[1, 1, 1, 2, 3, 5])
    df = make_split(table)
    assert (df.groupby("group")["split"].nunique() == 1).all()
    check_split(df)
    # Still roughly stratified with multi-image groups.
    counts = split_summary(df)
    assert abs(counts.loc["eosinophil", "train"] / COUNTS["eosinophil"] - 0.7) < 0.03


def test_deterministic_and_independent_of_row_order(tmp_path):
    table = _table(group_sizes=[1, 2])
    a = save_split(make_split(table, seed=7), tmp_path / "a.csv")
    b = save_split(make_split(table.sample(frac=1, random_state=3), seed=7), tmp_path / "b.csv")
    assert a.read_bytes() == b.read_bytes()
    c = save_split(make_split(table, seed=8), tmp_path / "c.csv")
    assert a.read_bytes() != c.read_bytes()


def test_only_usable_rows_are_split():
    table = _table()
    table.loc[:9, "status"] = "duplicate"
    df = make_split(table)
    assert len(df) == len(table) - 10
    assert list(df.columns) == list(SPLIT_COLUMNS)


def test_split_of_a_scanned_tree(defect_tree):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DataQualityWarning)
        m = scan(defect_tree.root, progress=False)
    df = make_split(m)
    assert sorted(df["relpath"]) == defect_tree.usable()
    group = df.set_index("relpath")["split"]
    assert group["platelet/PLATELET_0.jpg"] == group["platelet/PLATELET_0_q80.jpg"]
    check_split(df)


def test_check_split_catches_a_leak():
    df = make_split(_table(group_sizes=[2]))
    first_group = df["group"].iloc[0]
    rows = df.index[df["group"] == first_group]
    df.loc[rows[0], "split"], df.loc[rows[1], "split"] = "train", "test"
    with pytest.raises(ValueError, match="span several splits"):
        check_split(df)


@pytest.mark.parametrize(
    "fractions", [(0.7, 0.1, 0.1), (0.5, 0.6, -0.1), (0.5, 0.5), (0, 0.5, 0.5)]
)
def test_bad_fractions_are_refused(fractions):
    with pytest.raises(ValueError, match="fractions"):
        make_split(_table(), fractions)


def test_save_and_load_round_trip(clean_tree, tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("error", DataQualityWarning)
        df = make_split(scan(clean_tree.root, progress=False))
    path = save_split(df, tmp_path / "run" / "split.csv")
    back = load_split(path)
    pd.testing.assert_frame_equal(back, df.sort_values("relpath").reset_index(drop=True))


def test_load_with_root_rebuilds_paths_and_reports_missing_files(clean_tree, tmp_path):
    df = make_split(scan(clean_tree.root, progress=False))
    path = save_split(df, tmp_path / "split.csv")
    moved = tmp_path / "moved"
    clean_tree.root.rename(moved)
    with pytest.raises(FileNotFoundError, match="pass root="):
        load_split(path)
    back = load_split(path, root=moved)
    assert all(p.startswith(str(moved.resolve())) for p in back["path"])
    (moved / back["relpath"].iloc[0]).unlink()
    with pytest.raises(FileNotFoundError, match=r"1 of \d+ files .* missing"):
        load_split(path, root=moved)
    assert len(load_split(path, root=moved, check=False)) == len(df)


def test_load_refuses_a_file_that_is_not_a_split(tmp_path):
    bad = tmp_path / "x.csv"
    bad.write_text("a,b\n1,2\n")
    with pytest.raises(ValueError, match="missing columns"):
        load_split(bad)
    with pytest.raises(FileNotFoundError):
        load_split(tmp_path / "absent.csv")


def test_split_summary_shape():
    df = make_split(_table())
    summary = split_summary(df)
    assert list(summary.columns) == ["train", "val", "test", "total"]
    assert [c for c in CLASSES if c in summary.index] == list(summary.index)
    assert summary["total"].to_dict() == COUNTS
    assert summary["total"].sum() == len(df)


def test_empty_input_gives_empty_split():
    empty = _table().iloc[:0]
    assert make_split(empty).empty
