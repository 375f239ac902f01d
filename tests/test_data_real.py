"""The data layer on the real dev copy of PBC (6,837 images); skipped when it is absent."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
from shared_data import dev_dir

from bloodlib import CLASSES
from bloodlib.data.manifest import DataQualityWarning, scan
from bloodlib.data.source import resolve
from bloodlib.data.split import check_split, make_split, split_summary

pytestmark = pytest.mark.data

FRACTIONS = (0.7, 0.1, 0.2)


def _snapshot(root: Path):
    """Listing, sizes and mtimes of the folder and everything in it."""
    return sorted(
        (str(p.relative_to(root)), p.stat().st_size, p.stat().st_mtime_ns)
        for p in [root, *root.rglob("*")]
    )


@pytest.fixture(scope="module")
def dev(tmp_path_factory):
    """One cold scan of the dev folder, with its own cache, and the folder's state around it."""
    root = dev_dir()
    cache = tmp_path_factory.mktemp("dev-cache")
    before = _snapshot(root)
    with pytest.MonkeyPatch.context() as mp, warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", DataQualityWarning)
        mp.setenv("BLOODLIB_CACHE", str(cache))
        manifest = scan(resolve(root), progress=False)
    return {"root": root, "cache": cache, "m": manifest, "before": before, "warned": caught}


def test_all_files_are_found(dev):
    t = dev["m"].table
    assert len(t) == 6838  # 6,837 images and one hidden .DS_ file
    assert (t["status"] != "hidden").sum() == 6837
    assert set(t["label"]) == set(CLASSES)
    assert dev["m"].warnings == []


def test_hidden_file_is_flagged(dev):
    row = dev["m"].table.set_index("relpath").loc["neutrophil/.DS_169665.jpg"]
    assert row["status"] == "hidden"
    assert "not an image" in row["reason"] and "DS_Store" in row["reason"]


def test_the_cross_class_pair_is_a_label_conflict(dev):
    t = dev["m"].table.set_index("relpath")
    pair = ["neutrophil/BNE_191112.jpg", "eosinophil/EO_225902.jpg"]
    assert (t.loc[pair, "status"] == "label_conflict").all()
    assert t.loc[pair[0], "sha256"] == t.loc[pair[1], "sha256"]
    assert (t["status"] == "label_conflict").sum() == 2


def test_same_class_duplicates(dev):
    t = dev["m"].table
    dups = t[t["status"] == "duplicate"]
    assert len(dups) == 9
    kept = t[t["sha256"].isin(dups["sha256"]) & (t["status"] == "ok")]
    assert len(kept) == 9  # one kept copy per duplicate set, in the same class
    assert set(zip(dups["sha256"], dups["label"], strict=True)) == set(
        zip(kept["sha256"], kept["label"], strict=True)
    )


def test_normal_size_variation_is_not_a_defect(dev):
    t = dev["m"].table
    assert set(t["status"]) == {"ok", "hidden", "label_conflict", "duplicate"}
    usable = dev["m"].usable
    assert len(usable) == 6837 - 2 - 9
    assert {(360, 363), (366, 369), (360, 360)} <= set(
        zip(usable["width"], usable["height"], strict=True)
    )


def test_one_summary_warning(dev):
    messages = [str(w.message) for w in dev["warned"]]
    assert len(messages) == 1
    assert "12 files excluded: 1 hidden, 2 label_conflict, 9 duplicate" in messages[0]


def test_split_is_leak_free_and_on_target(dev):
    df = make_split(dev["m"])
    check_split(df)
    assert (df.groupby("group")["split"].nunique() == 1).all()
    assert (df.groupby("sha256")["split"].nunique() == 1).all()
    counts = split_summary(df)
    for label in CLASSES:
        n = counts.loc[label, "total"]
        for split, frac in zip(("train", "val", "test"), FRACTIONS, strict=True):
            assert abs(counts.loc[label, split] - n * frac) <= 2, (label, split)


def test_second_scan_is_a_cache_hit(dev, monkeypatch):
    assert not dev["m"].from_cache
    monkeypatch.setenv("BLOODLIB_CACHE", str(dev["cache"]))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DataQualityWarning)
        again = scan(dev["root"], progress=False)
    assert again.from_cache
    assert again.content_hash() == dev["m"].content_hash()


def test_scan_did_not_touch_the_data_folder(dev):
    assert _snapshot(dev["root"]) == dev["before"]
