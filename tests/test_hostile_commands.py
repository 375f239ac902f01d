"""Trust, second round (issue 35): adapt, ensemble and export held to classify's standard.

Each test is one finding, reproduced as a careful or a hostile user met it: the files a scan
accepts reach the network with their colours and never stop a run, adapt reads its folder as
the scan does, every command that writes a model follows one rule for ``--out``, numbers are
finite, an unbound sidecar is never re-bound, and a zip of many small members is a bomb too.
(Finding 10, a model scored on a split it was trained on, is in ``test_stale_models.py``.)
"""

from __future__ import annotations

import io
import json
import shutil
import struct
import zipfile
from pathlib import Path

import numpy as np
import pytest
import tiny_models
from PIL import Image

from bloodlib import CLASSES
from bloodlib.cli import main
from bloodlib.core.errors import OutputPathError
from bloodlib.data import source
from bloodlib.data.files import inspect_file
from bloodlib.data.labs import LabFolderError, labelled_cells
from bloodlib.data.pipeline import load_images
from bloodlib.models.ensemble import build_ensemble
from bloodlib.models.saved import SidecarError, read_sidecar, save_classifier, sidecar_path
from bloodlib.predict.classify import classify_folder
from bloodlib.predict.engine import load_classifier
from bloodlib.predict.export import export_model
from bloodlib.train.adapt import adapt

pytestmark = pytest.mark.unit

SIZE = tiny_models.SIZE
INFO = {"method": "finetune", "backbone": "tiny", "classes": list(CLASSES), "image_size": SIZE}
#: adapt as quick as it gets: the head only, two passes.
QUICK = {"train": "head", "epochs": 2, "shots": 2, "seed": 1}


def vertex_rgb(c: int, seed: int, size: int = 40) -> np.ndarray:
    return np.asarray(tiny_models.cell(c, seed, size), np.uint8)


def palette_bmp(rgb: np.ndarray) -> bytes:
    """An 8-bit palette BMP, as Pillow writes one from a quantised image."""
    buf = io.BytesIO()
    Image.fromarray(rgb).quantize(colors=64).save(buf, "BMP")
    return buf.getvalue()


def rle8_bmp(rgb: np.ndarray) -> bytes:
    """An RLE8-compressed BMP (BI_RLE8): palette indices as runs, bottom row first.

    Pillow reads these but does not write them; cameras and old Windows tools do.
    """
    im = Image.fromarray(rgb).quantize(colors=64)
    w, h = im.size
    idx = np.asarray(im, np.uint8)
    palette = np.asarray(im.getpalette()[: 3 * 256], np.uint8).reshape(-1, 3)
    palette = np.vstack([palette, np.zeros((256 - len(palette), 3), np.uint8)])
    data = bytearray()
    for row in idx[::-1]:
        x = 0
        while x < w:
            run = 1
            while x + run < w and run < 255 and row[x + run] == row[x]:
                run += 1
            data += bytes([run, row[x]])
            x += run
        data += b"\x00\x00"  # end of line
    data += b"\x00\x01"  # end of bitmap
    colours = b"".join(bytes([b, g, r, 0]) for r, g, b in palette)
    offset = 14 + 40 + len(colours)
    header = b"BM" + struct.pack("<IHHI", offset + len(data), 0, 0, offset)
    info = struct.pack("<IiiHHIIiiII", 40, w, h, 1, 8, 1, len(data), 2835, 2835, 256, 0)
    return header + info + colours + bytes(data)


def pillow_rgb(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"), np.uint8)


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    """A bound fine-tuned network (the tests' vertex classifier: it reads a cell's mean colour)."""
    path = tmp_path_factory.mktemp("run") / "models" / "base.keras"
    return save_classifier(tiny_models.vertex_classifier(SIZE), path, {"name": "base", **INFO})


@pytest.fixture
def base_copy(base, tmp_path) -> Path:
    path = tmp_path / "models" / "base.keras"
    path.parent.mkdir(parents=True)
    shutil.copy(base, path)
    shutil.copy(sidecar_path(base), sidecar_path(path))
    return path


@pytest.fixture
def lab(tmp_path) -> Path:
    """Three classes, four JPEG cells each, in the class layout."""
    root = tmp_path / "lab"
    for c, cls in ((0, "basophil"), (1, "eosinophil"), (4, "lymphocyte")):
        for i in range(4):
            tiny_models.write_cell(root / cls / f"{cls[:2]}_{i}.jpg", c, seed=10 * c + i)
    return root


# --- findings 1-3: every format the scan accepts decodes with Pillow's colours ------------


@pytest.mark.parametrize(
    "name,encode",
    [
        ("png.png", lambda rgb: _pil_bytes(rgb, "PNG")),
        ("palette.png", lambda rgb: _pil_bytes(Image.fromarray(rgb).quantize(64), "PNG")),
        ("gif.gif", lambda rgb: _pil_bytes(Image.fromarray(rgb).quantize(64), "GIF")),
        ("rgb.bmp", lambda rgb: _pil_bytes(rgb, "BMP")),
        ("palette.bmp", palette_bmp),
        ("rle8.bmp", rle8_bmp),
        ("tiff.tif", lambda rgb: _pil_bytes(rgb, "TIFF")),
        ("webp.webp", lambda rgb: _pil_bytes(rgb, "WEBP", lossless=True)),
    ],
)
def test_every_lossless_format_the_scan_accepts_reaches_the_network_as_pillow_sees_it(
    tmp_path, name, encode
):
    path = tmp_path / "cells" / name
    path.parent.mkdir()
    path.write_bytes(encode(vertex_rgb(3, seed=7)))
    assert inspect_file(path.parent, name)["status"] == "unknown_class"  # usable, not in a class
    want = pillow_rgb(path)
    # At its own size the pipeline's resize is the identity: the pixels are the decoder's.
    got = load_images([str(path)], want.shape[:2])[0]
    np.testing.assert_array_equal(got, want.astype(np.float32))


def _pil_bytes(image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    (image if isinstance(image, Image.Image) else Image.fromarray(image)).save(buf, fmt, **kw)
    return buf.getvalue()


def test_a_folder_of_palette_bmps_is_classified_as_its_pngs_are(base, tmp_path):
    """Finding 1: palette BMPs were read as grey indices (accuracy 0.97 as PNG, 0.10 as BMP)."""
    for fmt, encode in (("png", lambda rgb: _pil_bytes(rgb, "PNG")), ("bmp", palette_bmp)):
        for c in range(8):
            rgb = np.asarray(Image.fromarray(vertex_rgb(c, seed=c)).quantize(64).convert("RGB"))
            path = tmp_path / fmt / CLASSES[c] / f"{c}.{fmt}"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(encode(rgb))
    png = classify_folder(base, tmp_path / "png", progress=False, engine="keras")
    bmp = classify_folder(base, tmp_path / "bmp", progress=False, engine="keras")
    assert png.metrics["accuracy"] == 1.0
    assert bmp.metrics["accuracy"] == png.metrics["accuracy"]
    assert list(bmp.table["predicted"]) == list(png.table["predicted"])


def test_an_rle_bmp_never_stops_classify(base, tmp_path, capsys):
    """Finding 2: one RLE8 BMP raised inside tf.data and classify died without a CSV."""
    folder = tmp_path / "cells"
    tiny_models.write_cell(folder / "neutrophil" / "a.jpg", 6, seed=1)
    (folder / "neutrophil" / "b.bmp").write_bytes(rle8_bmp(vertex_rgb(6, seed=2)))
    code = main(["classify", str(base), str(folder), "--out", str(tmp_path / "p.csv")])
    assert code == 0, capsys.readouterr().err
    table = __import__("pandas").read_csv(tmp_path / "p.csv")
    assert list(table["status"]) == ["classified", "classified"]
    assert list(table["predicted"]) == ["neutrophil", "neutrophil"]


def test_an_rle_bmp_never_stops_adapt(base_copy, lab, tmp_path):
    """Finding 3: the same file stopped adapt after the model was loaded and scored."""
    (lab / "basophil" / "rle.bmp").write_bytes(rle8_bmp(vertex_rgb(0, seed=99)))
    result = adapt(base_copy, lab, tmp_path / "out" / "new.keras", **QUICK)
    assert "basophil/rle.bmp" in set(result.support["relpath"]) | set(result.held_out["relpath"])
    assert result.after is not None


# --- finding 4: an empty class folder is refused -----------------------------------------


def test_adapt_refuses_an_empty_class_folder(base_copy, lab, tmp_path):
    (lab / "monocyte").mkdir()
    with pytest.raises(LabFolderError, match="monocyte .*hold no usable cell"):
        labelled_cells(lab)
    out = tmp_path / "out" / "new.keras"
    with pytest.raises(LabFolderError, match="monocyte"):
        adapt(base_copy, lab, out, **QUICK)
    assert not out.exists()


def test_a_folder_of_only_empty_class_folders_says_which(tmp_path):
    (tmp_path / "lab" / "Basophil").mkdir(parents=True)
    with pytest.raises(LabFolderError, match="Basophil .*hold no usable cell"):
        labelled_cells(tmp_path / "lab")


# --- finding 5: one rule for every command that writes a model --------------------------


def test_adapt_and_ensemble_never_replace_an_unrelated_model_without_force(
    base_copy, lab, tmp_path
):
    unrelated = save_classifier(
        tiny_models.vertex_classifier(SIZE), tmp_path / "other" / "theirs.keras", INFO
    )
    before = unrelated.read_bytes(), sidecar_path(unrelated).read_text()
    with pytest.raises(OutputPathError, match="add --force"):
        adapt(base_copy, lab, unrelated, **QUICK)
    member = tmp_path / "models" / "member.keras"
    shutil.copy(base_copy, member)
    shutil.copy(sidecar_path(base_copy), sidecar_path(member))
    # a different network, or an ensemble of a network with itself is refused anyway
    second = save_classifier(_shifted(), tmp_path / "models" / "second.keras", INFO)
    with pytest.raises(OutputPathError, match="add --force"):
        build_ensemble([member, second], unrelated)
    assert (unrelated.read_bytes(), sidecar_path(unrelated).read_text()) == before
    # Re-running the same command replaces its own output; --force replaces any model.
    out = tmp_path / "out" / "adapted.keras"
    adapt(base_copy, lab, out, **QUICK)
    adapt(base_copy, lab, out, **QUICK)
    build_ensemble([member, second], tmp_path / "out" / "ens.keras")
    build_ensemble([member, second], tmp_path / "out" / "ens.keras")
    adapt(base_copy, lab, unrelated, force=True, **QUICK)
    assert read_sidecar(unrelated)["base_model_sha256"] == load_classifier(base_copy).sha256


def test_the_cli_says_force_for_adapt_and_ensemble(base_copy, lab, tmp_path, capsys):
    unrelated = save_classifier(
        tiny_models.vertex_classifier(SIZE), tmp_path / "other" / "theirs.keras", INFO
    )
    argv = ["adapt", str(base_copy), str(lab), "--out", str(unrelated), "--train", "head"]
    assert main([*argv, "--epochs", "1", "--shots", "2"]) == 2
    assert "--force" in " ".join(capsys.readouterr().err.split())
    assert main([*argv, "--epochs", "1", "--shots", "2", "--force"]) == 0


def _shifted():
    """The vertex classifier with another head bias: a second, different network."""
    model = tiny_models.vertex_classifier(SIZE)
    w, b = model.get_layer("head").get_weights()
    model.get_layer("head").set_weights([w, b + 0.1])
    return model


# --- finding 6: adapt leaves out copies --------------------------------------------------


def test_adapt_never_learns_and_scores_one_cell_nor_learns_it_twice(base_copy, lab, tmp_path):
    shutil.copy(lab / "basophil" / "ba_0.jpg", lab / "basophil" / "ba_0_copy.jpg")
    shutil.copy(lab / "eosinophil" / "eo_1.jpg", lab / "lymphocyte" / "ly_eo.jpg")
    cells, _, copies = labelled_cells(lab)
    assert dict(zip(copies["relpath"], copies["status"], strict=True)) == {
        "basophil/ba_0_copy.jpg": "duplicate",
        "eosinophil/eo_1.jpg": "label_conflict",
        "lymphocyte/ly_eo.jpg": "label_conflict",
    }
    assert cells["sha256"].is_unique
    result = adapt(base_copy, lab, tmp_path / "out" / "new.keras", **{**QUICK, "shots": 3})
    assert not set(result.support["sha256"]) & set(result.held_out["sha256"])
    assert "left out as copies" in result.report()


# --- finding 7: numbers are finite; a network of NaN weights is never written ------------


@pytest.mark.parametrize("option", ["--learning-rate", "--entropy-weight"])
@pytest.mark.parametrize("value", ["inf", "-inf", "nan"])
def test_adapt_refuses_non_finite_numbers(base_copy, lab, tmp_path, capsys, option, value):
    out = tmp_path / "out" / "new.keras"
    argv = ["adapt", str(base_copy), str(lab), "--out", str(out), f"{option}={value}"]
    if option == "--entropy-weight":
        argv += ["--unlabelled", str(lab)]
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2 and "finite" in capsys.readouterr().err
    for key in ("learning_rate", "entropy_weight"):
        with pytest.raises(ValueError, match="finite"):
            adapt(base_copy, lab, out, **{**QUICK, key: float(value)})
    assert not out.exists()


def test_a_network_with_non_finite_weights_is_never_written(tmp_path):
    model = tiny_models.vertex_classifier(SIZE)
    w, b = model.get_layer("head").get_weights()
    model.get_layer("head").set_weights([w * np.nan, b])
    out = tmp_path / "models" / "nan.keras"
    with pytest.raises(Exception, match="non-finite weights"):
        save_classifier(model, out, INFO)
    assert not out.exists() and not sidecar_path(out).exists()


# --- finding 8: an unbound sidecar is trusted no further than its classes -----------------


def _unbind(model: Path, **changes) -> None:
    info = {k: v for k, v in read_sidecar(model).items() if not k.endswith("sha256")}
    sidecar_path(model).write_text(json.dumps({**info, **changes}))


def test_a_hashless_sidecar_with_reordered_classes_is_refused(base_copy, lab, tmp_path):
    _unbind(base_copy, classes=list(CLASSES)[::-1])
    with pytest.raises(SidecarError, match="records no model_sha256"):
        load_classifier(base_copy)
    with pytest.raises(SidecarError):
        classify_folder(base_copy, lab, progress=False)


def test_an_unbound_sidecar_is_never_re_bound(base_copy, lab, tmp_path):
    _unbind(base_copy)  # bloodlib's classes: it still loads, loudly
    with pytest.warns(UserWarning, match="no model_sha256"):
        load_classifier(base_copy)
    for write in (
        lambda: adapt(base_copy, lab, tmp_path / "a.keras", **QUICK),
        lambda: build_ensemble([base_copy, base_copy], tmp_path / "e.keras"),
        lambda: export_model(base_copy, "tflite", tmp_path / "x.tflite"),
    ):
        with pytest.warns(UserWarning), pytest.raises(SidecarError, match="Re-save the model"):
            write()
    assert not list(tmp_path.glob("*.keras")) + list(tmp_path.glob("*.tflite"))


# --- finding 9: the zip bomb guard sees the whole archive ---------------------------------


def test_a_zip_of_many_small_members_is_refused(tmp_path):
    archive = tmp_path / "many.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
        for i in range(300):  # each under the per-member floor of 1 MiB
            zf.writestr(f"PBC/basophil/{i}.jpg", b"\0" * ((1 << 20) - 1))
    assert archive.stat().st_size < 2 << 20
    with zipfile.ZipFile(archive) as zf:
        with pytest.raises(source.DataSourceError, match="as a whole"):
            source.check_zip_limits(archive, zf.infolist())
    with pytest.raises(source.DataSourceError, match="zip bomb"):
        source.resolve(archive)
    assert not any((Path(source.cache_dir()) / "datasets").glob("**/*.jpg"))
