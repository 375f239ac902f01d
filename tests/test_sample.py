"""The embedded sample: how it is made (synthetic tree) and what the shipped one holds."""

from __future__ import annotations

import warnings

import pytest

from bloodlib import CLASSES
from bloodlib.config import SAMPLE_DIR
from bloodlib.manifest import DataQualityWarning, scan
from bloodlib.sample import make_sample

pytestmark = [
    pytest.mark.unit,
    pytest.mark.filterwarnings("ignore::bloodlib.manifest.DataQualityWarning"),
]


def _scan(root):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DataQualityWarning)
        return scan(root, progress=False)


def _files(root):
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())


def test_sample_is_stratified_and_carries_teaching_defects(defect_tree, tmp_path):
    dst = tmp_path / "sample"
    picked = make_sample(defect_tree.root, dst, per_class=2, seed=42)
    assert _files(dst) == sorted(picked["relpath"])
    random = picked[picked["why"] == "random"]
    assert random["label"].value_counts().to_dict() == {
        c: 2 for c in CLASSES if c != "erythroblast"
    }
    teaching = set(picked.loc[picked["why"] != "random", "relpath"])
    assert {"monocyte/._MO_0.jpg", "neutrophil/BNE_conflict.jpg", "eosinophil/EO_conflict.jpg"} <= (
        teaching
    )
    assert {"monocyte/MO_0.jpg", "monocyte/MO_copy.jpg"} <= set(picked["relpath"])
    for rel in picked["relpath"]:  # byte copies
        assert (dst / rel).read_bytes() == (defect_tree.root / rel).read_bytes()
    extra_ok = "monocyte/MO_0.jpg" not in set(random["relpath"])  # the kept half of the pair
    statuses = _scan(dst).status_counts()
    assert statuses == {"ok": 2 * 7 + extra_ok, "hidden": 1, "label_conflict": 2, "duplicate": 1}


def test_sample_is_deterministic_and_seeded(clean_tree, tmp_path):
    a = make_sample(clean_tree.root, tmp_path / "a", per_class=3, seed=1)
    b = make_sample(clean_tree.root, tmp_path / "b", per_class=3, seed=1)
    c = make_sample(clean_tree.root, tmp_path / "c", per_class=3, seed=2)
    assert a.equals(b)
    assert list(a["relpath"]) != list(c["relpath"])
    assert len(a) == 3 * len(CLASSES)


def test_without_teaching_defects_only_usable_images(defect_tree, tmp_path):
    picked = make_sample(defect_tree.root, tmp_path / "s", per_class=10, teaching_defects=False)
    assert (picked["status"] == "ok").all()
    assert _scan(tmp_path / "s").quality.empty


def test_refuses_to_overwrite_or_write_into_the_source(clean_tree, tmp_path):
    dst = tmp_path / "s"
    make_sample(clean_tree.root, dst, per_class=1)
    with pytest.raises(FileExistsError):
        make_sample(clean_tree.root, dst, per_class=1)
    make_sample(clean_tree.root, dst, per_class=2, overwrite=True)
    assert len(_files(dst)) == 2 * len(CLASSES)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp left
    with pytest.raises(ValueError, match="inside its source"):
        make_sample(clean_tree.root, clean_tree.root / "sample", per_class=1)


# --------------------------------------------------------------------------- shipped sample


@pytest.fixture(scope="module")
def shipped():
    if not SAMPLE_DIR.is_dir():
        pytest.skip("data/sample is absent")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DataQualityWarning)
        return scan(SAMPLE_DIR, progress=False, use_cache=False)


def test_shipped_sample_is_small_and_complete(shipped):
    size = sum(p.stat().st_size for p in SAMPLE_DIR.rglob("*") if p.is_file())
    assert size < 10 * 2**20
    usable = shipped.usable["label"].value_counts()
    assert all(usable[c] >= 30 for c in CLASSES)
    assert shipped.warnings == []


def test_shipped_sample_holds_the_real_defects(shipped):
    status = dict(zip(shipped.table["relpath"], shipped.table["status"], strict=True))
    assert status["neutrophil/.DS_169665.jpg"] == "hidden"
    assert status["neutrophil/BNE_191112.jpg"] == "label_conflict"
    assert status["eosinophil/EO_225902.jpg"] == "label_conflict"
    assert list(shipped.table["status"]).count("duplicate") == 1
