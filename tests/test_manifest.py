"""Manifest scan: one row per file, every defect named, copies grouped, cache keyed by listing."""

from __future__ import annotations

import os
import warnings

import pandas as pd
import pytest
from PIL import Image, ImageFile

from bloodlib import CLASSES
from bloodlib.data import files, manifest
from bloodlib.data.manifest import COLUMNS, DataQualityWarning, Manifest, scan

pytestmark = pytest.mark.unit


def _scan(root, **kw) -> Manifest:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DataQualityWarning)
        return scan(root, progress=False, **kw)


def _snapshot(root):
    return sorted(
        (str(p.relative_to(root)), p.stat().st_mtime_ns, p.stat().st_size)
        for p in [root, *root.rglob("*")]
    )


def test_every_file_gets_its_expected_status(defect_tree):
    m = _scan(defect_tree.root)
    got = dict(zip(m.table["relpath"], m.table["status"], strict=True))
    assert got == defect_tree.expected
    assert list(m.table.columns) == list(COLUMNS)


def test_usable_and_quality_tables(defect_tree):
    m = _scan(defect_tree.root)
    assert sorted(m.usable["relpath"]) == defect_tree.usable()
    assert (m.usable["status"] == "ok").all()
    assert list(m.quality.columns) == ["relpath", "label", "status", "reason"]
    assert len(m.quality) == sum(s != "ok" for s in defect_tree.expected.values())
    assert (m.quality["reason"] != "").all()


def test_reasons_are_specific(defect_tree):
    m = _scan(defect_tree.root)
    reason = dict(zip(m.table["relpath"], m.table["reason"], strict=True))
    assert reason["monocyte/MO_copy.jpg"] == "exact copy of monocyte/MO_0.jpg"
    assert "eosinophil/EO_conflict.jpg" in reason["neutrophil/BNE_conflict.jpg"]
    assert "neutrophil" in reason["eosinophil/EO_conflict.jpg"]
    assert "AppleDouble" in reason["monocyte/._MO_0.jpg"]  # says what the hidden file holds
    assert "text" in reason["neutrophil/BNE_notes.jpg"]
    assert "PNG" in reason["eosinophil/EO_png.jpg"]
    assert "truncated" in reason["basophil/BA_truncated.jpg"]
    assert "1000x1000" in reason["platelet/PLATELET_huge.jpg"]


def test_normal_size_variation_is_ok(clean_tree):
    m = _scan(clean_tree.root)
    sizes = set(zip(m.table["width"], m.table["height"], strict=True))
    assert {(360, 363), (366, 369), (360, 360)} <= sizes
    assert (m.table["status"] == "ok").all()


def test_pixel_columns(defect_tree):
    m = _scan(defect_tree.root)
    ok = m.usable
    assert ok["dhash"].str.fullmatch(r"[0-9a-f]{16}").all()
    assert ok["sha256"].str.fullmatch(r"[0-9a-f]{64}").all()
    assert (ok["mode"] == "RGB").all() and (ok["format"] == "JPEG").all()
    # Synthetic smears are pink: red above blue above green on average.
    assert (ok["mean_r"] > ok["mean_g"]).all() and ok["brightness"].between(100, 230).all()
    row = m.table.set_index("relpath").loc["neutrophil/BNE_notes.jpg"]
    assert row["dhash"] == "" and row["width"] == 0 and pd.isna(row["mean_r"])
    assert row["bytes"] == len(b"cell counts: 12, 15, 9\n")


def test_groups_join_exact_and_near_copies(defect_tree):
    m = _scan(defect_tree.root)
    group = dict(zip(m.table["relpath"], m.table["group"], strict=True))
    sha = dict(zip(m.table["relpath"], m.table["sha256"], strict=True))
    assert group["monocyte/MO_copy.jpg"] == group["monocyte/MO_0.jpg"] == sha["monocyte/MO_0.jpg"]
    # A re-encoded copy has other bytes but the same picture.
    assert sha["platelet/PLATELET_0_q80.jpg"] != sha["platelet/PLATELET_0.jpg"]
    assert group["platelet/PLATELET_0_q80.jpg"] == group["platelet/PLATELET_0.jpg"]
    # Everything else usable is its own group.
    usable = m.usable
    assert usable["group"].nunique() == len(usable) - 1


def test_near_pairs_uses_hamming_distance():
    hashes = ["0000000000000000", "0000000000000007", "000000000000000f", "ffffffffffffffff"]
    assert manifest.near_pairs(hashes, max_distance=3) == [(0, 1), (1, 2)]
    assert manifest.near_pairs(hashes, max_distance=0) == []


def test_summary_and_warnings_report_empty_and_missing_classes(defect_tree):
    (defect_tree.root / "platelet").rename(defect_tree.root / "platelets_old")
    m = _scan(defect_tree.root)
    assert "class 'erythroblast': empty folder" in m.warnings
    assert "class 'platelet': missing folder" in m.warnings
    s = m.summary()
    assert list(s.index[: len(CLASSES)]) == list(CLASSES)
    assert s.loc["erythroblast", "note"] == "empty folder"
    assert s.loc["platelet", ["found", "usable"]].tolist() == [0, 0]
    assert s.loc["basophil", ["found", "usable", "excluded", "truncated"]].tolist() == [5, 4, 1, 1]
    assert s.loc["platelets_old", "unknown_class"] == 6
    assert s.loc["(root)", "found"] == 2
    assert (s["found"] == s["usable"] + s["excluded"]).all()


def test_one_summary_warning_per_scan(defect_tree):
    with pytest.warns(DataQualityWarning) as record:
        scan(defect_tree.root, progress=False)
    assert len(record) == 1
    message = str(record[0].message)
    assert "files excluded" in message and "1 truncated" in message
    assert "Manifest.quality" in message


def test_clean_tree_warns_nothing(clean_tree):
    with warnings.catch_warnings():
        warnings.simplefilter("error", DataQualityWarning)
        m = scan(clean_tree.root, progress=False)
    assert m.warnings == [] and m.quality.empty


def test_cache_hit_and_invalidation(defect_tree):
    first = _scan(defect_tree.root)
    assert not first.from_cache and first.cache_path.is_file()
    second = _scan(defect_tree.root)
    assert second.from_cache
    pd.testing.assert_frame_equal(first.table, second.table)
    assert second.content_hash() == first.content_hash()

    target = defect_tree.root / "basophil/BA_0.jpg"
    target.write_bytes(defect_tree.root.joinpath("basophil/BA_1.jpg").read_bytes())
    third = _scan(defect_tree.root)
    assert not third.from_cache
    assert third.table.set_index("relpath").loc["basophil/BA_1.jpg", "status"] == "duplicate"
    assert third.content_hash() != first.content_hash()


def test_use_cache_false_neither_reads_nor_writes(defect_tree):
    cached = manifest.cache_dir() / "manifests"
    m = _scan(defect_tree.root, use_cache=False)
    assert not m.from_cache and m.cache_path is None
    assert not cached.exists() or not any(cached.iterdir())
    _scan(defect_tree.root)  # fills the cache
    assert not _scan(defect_tree.root, use_cache=False).from_cache


def test_scan_never_writes_into_the_data_folder(defect_tree):
    before = _snapshot(defect_tree.root)
    _scan(defect_tree.root)
    _scan(defect_tree.root)
    assert _snapshot(defect_tree.root) == before


def test_content_hash_ignores_row_order(clean_tree):
    m = _scan(clean_tree.root)
    shuffled = Manifest(m.table.sample(frac=1, random_state=1), m.root)
    assert shuffled.content_hash() == m.content_hash()
    assert len(m.content_hash()) == 64


def test_a_crashing_decoder_becomes_a_row(clean_tree, monkeypatch):
    real_open = Image.open

    def flaky_open(fp, *args, **kwargs):
        im = real_open(fp, *args, **kwargs)
        if im.size == (366, 369):
            raise RuntimeError("decoder exploded")
        return im

    monkeypatch.setattr(files.Image, "open", flaky_open)
    m = _scan(clean_tree.root, use_cache=False)
    bad = m.table[m.table["width"] == 0]
    assert len(bad) == len(CLASSES)  # one 366x369 image per class
    assert (bad["status"] == "corrupt").all()
    assert bad["reason"].str.contains("decoder exploded").all()


def test_truncated_images_stay_strict(defect_tree, monkeypatch):
    _scan(defect_tree.root)
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False
    # Even when another library relaxed Pillow, the scan is strict (and restores it).
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    row = _scan(defect_tree.root, use_cache=False).table.set_index("relpath")
    assert row.loc["basophil/BA_truncated.jpg", "status"] == "truncated"
    assert ImageFile.LOAD_TRUNCATED_IMAGES is True


def test_grey_pixels_in_an_rgb_jpeg_are_flagged(clean_tree):
    path = clean_tree.root / "ig/IG_1000.jpg"
    Image.open(path).convert("L").convert("RGB").save(path, "JPEG", quality=95)
    row = _scan(clean_tree.root).table.set_index("relpath").loc["ig/IG_1000.jpg"]
    assert row["status"] == "grayscale" and row["mode"] == "RGB"


def test_hidden_image_says_it_decodes(clean_tree):
    src = clean_tree.root / "basophil/BA_1000.jpg"
    (clean_tree.root / "basophil/.BA_hidden.jpg").write_bytes(src.read_bytes())
    row = _scan(clean_tree.root).table.set_index("relpath").loc["basophil/.BA_hidden.jpg"]
    assert row["status"] == "hidden"
    assert "holds a valid JPEG 360x363 image" in row["reason"]


def test_case_insensitive_class_folders(clean_tree):
    os.rename(clean_tree.root / "basophil", clean_tree.root / "Basophil")
    m = _scan(clean_tree.root)
    assert (m.table["status"] == "ok").all()
    assert set(m.table["label"]) == set(CLASSES)


def test_sniff_names_common_junk():
    assert "DS_Store" in files.sniff(b"\x00\x00\x00\x01Bud1" + b"\0" * 100)
    assert "AppleDouble" in files.sniff(b"\x00\x05\x16\x07\x00\x02\x00\x00")
    assert files.sniff(b"") == "an empty file"
    assert files.sniff(b"hello world").startswith("text")
    assert "binary" in files.sniff(bytes(range(256)))


def test_missing_root_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a folder"):
        scan(tmp_path / "nope", progress=False)


def test_large_files_are_read_in_chunks_with_the_same_row(defect_tree, monkeypatch):
    """Above _READ_WHOLE_BYTES a file is hashed and decoded from disk; the rows do not change."""
    rels = sorted(defect_tree.expected)
    whole = [files.inspect_file(defect_tree.root, r) for r in rels]
    monkeypatch.setattr(files, "_READ_WHOLE_BYTES", 0)
    streamed = [files.inspect_file(defect_tree.root, r) for r in rels]
    pd.testing.assert_frame_equal(pd.DataFrame(whole), pd.DataFrame(streamed))


def test_one_rule_names_a_folder_s_class():
    from bloodlib.data.files import class_of

    assert class_of("Basophil") == "basophil"
    assert class_of("IG") == "ig"
    assert class_of("blasts") is None
    # A model's own classes, in their own spelling.
    assert class_of("neutrophil", ["Neutrophil", "Lymphocyte"]) == "Neutrophil"
    assert class_of("basophil", ["Neutrophil", "Lymphocyte"]) is None
