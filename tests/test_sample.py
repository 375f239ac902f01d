"""The embedded sample: how it is made (synthetic tree) and what the shipped one holds."""

from __future__ import annotations

import io
import json
import warnings

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from bloodlib import CLASSES
from bloodlib.core.config import SAMPLE_DIR
from bloodlib.core.hashing import sha256_file
from bloodlib.data.manifest import DataQualityWarning, scan
from bloodlib.data.sample import RECIPE, make_sample, shrink

pytestmark = [
    pytest.mark.unit,
    pytest.mark.filterwarnings("ignore::bloodlib.data.manifest.DataQualityWarning"),
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


def test_random_draw_takes_one_image_per_group_of_near_copies(defect_tree, tmp_path):
    # platelet holds 4 cells plus a re-encoded copy of PLATELET_0 (same group, status ok).
    picked = make_sample(defect_tree.root, tmp_path / "s", per_class=10, teaching_defects=False)
    platelets = set(picked.loc[picked["label"] == "platelet", "relpath"])
    assert len(platelets) == 4
    assert len(platelets & {"platelet/PLATELET_0.jpg", "platelet/PLATELET_0_q80.jpg"}) == 1


def test_resized_sample_keeps_the_defects_and_records_every_file(defect_tree, tmp_path):
    src, dst = defect_tree.root, tmp_path / "sample"
    copied = make_sample(src, tmp_path / "copied", per_class=2, seed=42)
    picked = make_sample(src, dst, per_class=2, seed=42, size=48, quality=85)
    assert list(picked["relpath"]) == list(copied["relpath"])  # the size changes no choice
    for rel, status in zip(picked["relpath"], picked["status"], strict=True):
        if status == "hidden":  # not an image: its bytes are the defect
            assert (dst / rel).read_bytes() == (src / rel).read_bytes()
        else:
            with Image.open(dst / rel) as im:
                assert (im.format, im.mode, im.size) == ("JPEG", "RGB", (48, 48))
    # Copies stay copies after re-encoding, so the scan finds the same real defects.
    assert _scan(dst).status_counts() == _scan(tmp_path / "copied").status_counts()

    record = pd.read_csv(dst.with_suffix(".csv"))
    assert sorted(record["relpath"]) == _files(dst)
    for row in record.itertuples():
        assert row.source_sha256 == sha256_file(src / row.relpath)
        assert row.sha256 == sha256_file(dst / row.relpath)
        assert row.bytes == (dst / row.relpath).stat().st_size
    recipe = json.loads(dst.with_suffix(".json").read_text())
    assert (recipe["size"], recipe["quality"], recipe["per_class"]) == (48, 85, 2)
    assert recipe["files"] == len(record)


def test_shrink_keeps_the_centre_square():
    # 120 wide, 100 high: a red band left and right of a green centre 100x100 square.
    img = np.zeros((100, 120, 3), np.uint8)
    img[:, :10] = img[:, 110:] = (255, 0, 0)
    img[:, 10:110] = (0, 255, 0)
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, "PNG")
    small = np.asarray(Image.open(io.BytesIO(shrink(buf, 20, 95))).convert("RGB"), np.int16)
    assert small.shape == (20, 20, 3)
    assert (small[..., 1] > 200).all() and (small[..., 0] < 60).all()  # green only, no red


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


def test_shipped_sample_is_small_and_large_enough_to_test_on(shipped):
    data = SAMPLE_DIR.parent
    assert sum(p.stat().st_size for p in data.rglob("*") if p.is_file()) < 10 * 2**20
    usable = shipped.usable["label"].value_counts()
    # The classroom run scores on a 20% test split that must hold at least 150 cells.
    assert all(usable[c] >= RECIPE["per_class"] for c in CLASSES)
    assert 0.2 * usable.sum() >= 150
    assert shipped.warnings == []
    sizes = shipped.table.loc[shipped.table["width"] > 0, ["width", "height"]]
    assert (sizes == RECIPE["size"]).all().all()


def test_shipped_sample_matches_its_record(shipped):
    record = pd.read_csv(SAMPLE_DIR.with_suffix(".csv"))
    assert dict(zip(record["relpath"], record["sha256"], strict=True)) == dict(
        zip(shipped.table["relpath"], shipped.table["sha256"], strict=True)
    )
    recipe = json.loads(SAMPLE_DIR.with_suffix(".json").read_text())
    assert {k: recipe[k] for k in RECIPE} == RECIPE


def test_shipped_sample_holds_the_real_defects(shipped):
    status = dict(zip(shipped.table["relpath"], shipped.table["status"], strict=True))
    assert status["neutrophil/.DS_169665.jpg"] == "hidden"
    assert status["neutrophil/BNE_191112.jpg"] == "label_conflict"
    assert status["eosinophil/EO_225902.jpg"] == "label_conflict"
    assert list(shipped.table["status"]).count("duplicate") == 1
