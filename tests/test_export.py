"""``python -m bloodlib export``: TFLite, ONNX and SavedModel copies of a tiny classifier.

Each export is read back with its own runtime (the TFLite interpreter, ONNX Runtime,
``tf.saved_model.load``), never through bloodlib's export code, and compared with Keras.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import tiny_models

from bloodlib import CLASSES
from bloodlib.cli import build_parser, main
from bloodlib.core.errors import OutputPathError
from bloodlib.core.hashing import sha256_file
from bloodlib.models.saved import binding_sha256, save_classifier, sidecar_path, validate_sidecar
from bloodlib.predict import export
from bloodlib.predict.export import ExportError, export_model, export_sidecar_path, tree_sha256

pytestmark = pytest.mark.unit

SIZE = tiny_models.SIZE
INFO = {"method": "finetune", "backbone": "tiny", "classes": list(CLASSES), "image_size": SIZE}
#: A faithful float32 conversion differs from Keras by rounding only (export.TOLERANCE).
MAX_DIFF = 1e-4


@pytest.fixture(autouse=True)
def tiny_backbone(monkeypatch):
    from bloodlib.models import backbones

    bb = tiny_models.backbone("tiny", tiny_models.mean_colour_builder, "none", feature_dim=3)
    monkeypatch.setitem(backbones.REGISTRY, "tiny", bb)


@pytest.fixture
def model_path(tmp_path) -> Path:
    path = tmp_path / "models" / "m.keras"
    return save_classifier(tiny_models.vertex_classifier(SIZE), path, {"name": "m", **INFO})


def images(n: int = 6) -> np.ndarray:
    """Cells of known colour classes, float32 0..255, plus the pure cube corners."""
    cells = [np.asarray(tiny_models.cell(c % 8, seed=c, size=SIZE), np.float32) for c in range(n)]
    return np.stack(cells)


def keras_probs(model_path: Path, x: np.ndarray) -> np.ndarray:
    import keras

    model = keras.models.load_model(model_path, compile=False, safe_mode=True)
    return np.asarray(model(x, training=False))


def run_export(fmt: str, x: np.ndarray, out: Path) -> np.ndarray:
    """Probabilities of the exported file, computed by its own runtime."""
    if fmt == "tflite":
        import tensorflow as tf

        with warnings.catch_warnings():  # deprecated for ai_edge_litert, still the reference
            warnings.simplefilter("ignore", UserWarning)
            it = tf.lite.Interpreter(model_path=str(out))
        inp, outp = it.get_input_details()[0], it.get_output_details()[0]
        it.resize_tensor_input(inp["index"], list(x.shape))
        it.allocate_tensors()
        it.set_tensor(inp["index"], x)
        it.invoke()
        return it.get_tensor(outp["index"])
    if fmt == "onnx":
        import onnxruntime as ort

        session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
        return session.run(None, {"image": x})[0]
    import tensorflow as tf

    return (
        tf.saved_model.load(str(out))
        .signatures["serving_default"](image=tf.constant(x))["output_0"]
        .numpy()
    )


OUT_NAMES = {"tflite": "m.tflite", "onnx": "m.onnx", "savedmodel": "m_savedmodel"}


@pytest.mark.parametrize("fmt", list(export.FORMATS))
def test_export_round_trips_through_the_cli(fmt, model_path, tmp_path, capsys):
    if fmt == "onnx":
        pytest.importorskip("tf2onnx")
        pytest.importorskip("onnxruntime")
    out = tmp_path / "exported" / OUT_NAMES[fmt]
    assert main(["export", str(model_path), "--format", fmt, "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "max |difference|" in printed and str(out) in printed

    x = images()
    expected = keras_probs(model_path, x)
    got = run_export(fmt, x, out)
    assert got.shape == expected.shape == (len(x), len(CLASSES))
    assert np.max(np.abs(got - expected)) < MAX_DIFF
    # The tiny model is exact about its colour classes: the export keeps the answers.
    assert (got.argmax(1) == np.arange(len(x)) % 8).all()

    side = export_sidecar_path(out)
    info = validate_sidecar(json.loads(side.read_text()), side)
    assert info["format"] == fmt
    assert info["classes"] == list(CLASSES) and info["image_size"] == SIZE
    assert info["model_sha256"] == tree_sha256(out)
    assert info["source_model_sha256"] == sha256_file(model_path)
    assert info["binding_sha256"] == binding_sha256(info, info["model_sha256"])
    assert info["export_check"]["max_abs_diff"] < MAX_DIFF
    assert info["export_check"]["images"] == ("sample" if _sample_ok() else "random")
    assert not [p.name for p in out.parent.iterdir() if p.name.startswith(".")]  # no staging left


def _sample_ok() -> bool:
    from bloodlib.core.config import SAMPLE_DIR

    return all(
        any(not p.name.startswith(".") for p in (SAMPLE_DIR / c).glob("*.jpg")) for c in CLASSES
    )


def test_tree_sha256_of_a_folder_depends_on_names_and_content(tmp_path):
    a = tmp_path / "a"
    (a / "sub").mkdir(parents=True)
    (a / "sub" / "x").write_bytes(b"1")
    first = tree_sha256(a)
    (a / "sub" / "x").write_bytes(b"2")
    second = tree_sha256(a)
    (a / "sub" / "x").rename(a / "sub" / "y")
    assert len({first, second, tree_sha256(a)}) == 3


def test_out_onto_the_model_or_its_sidecar_is_refused(model_path, capsys):
    before = sha256_file(model_path)
    side_before = sidecar_path(model_path).read_bytes()
    for fmt, out in [
        ("tflite", model_path),  # wrong suffix for tflite and the model itself
        ("savedmodel", model_path),
        ("savedmodel", model_path.with_suffix("")),  # its sidecar would be models/m.json
        ("savedmodel", model_path.parent),  # the folder holding the model
    ]:
        with pytest.raises(OutputPathError):
            export_model(model_path, fmt, out, force=True)
    assert (
        main(["export", str(model_path), "--format", "savedmodel", "--out", str(model_path)]) == 2
    )
    assert "would overwrite the model" in " ".join(capsys.readouterr().err.split())
    assert sha256_file(model_path) == before
    assert sidecar_path(model_path).read_bytes() == side_before


def test_existing_other_file_needs_force_and_own_export_does_not(model_path, tmp_path):
    out = tmp_path / "m.tflite"
    out.write_bytes(b"someone else's file")
    with pytest.raises(OutputPathError, match="--force"):
        export_model(model_path, "tflite", out)
    assert out.read_bytes() == b"someone else's file"
    export_model(model_path, "tflite", out, force=True)
    sha = sha256_file(out)
    assert json.loads(export_sidecar_path(out).read_text())["model_sha256"] == sha
    export_model(model_path, "tflite", out)  # this model's own export: replaced without --force
    assert json.loads(export_sidecar_path(out).read_text())["model_sha256"] == sha256_file(out)

    lone = tmp_path / "lone.onnx"
    export_sidecar_path(lone).write_text("notes that happen to bear the sidecar's name")
    with pytest.raises(OutputPathError, match="--force"):
        export_model(model_path, "onnx", lone)
    assert export_sidecar_path(lone).read_text().startswith("notes")


def test_force_never_replaces_a_folder_that_is_not_a_savedmodel(model_path, tmp_path):
    folder = tmp_path / "precious"
    folder.mkdir()
    (folder / "notes.txt").write_text("keep me")
    with pytest.raises(OutputPathError, match="not a SavedModel"):
        export_model(model_path, "savedmodel", folder, force=True)
    assert (folder / "notes.txt").read_text() == "keep me"


def test_wrong_suffix_is_refused_before_any_work(model_path, tmp_path):
    with pytest.raises(OutputPathError, match=r"\.onnx"):
        export_model(model_path, "onnx", tmp_path / "m.tflite")


def test_a_mismatching_export_writes_nothing(model_path, tmp_path, monkeypatch):
    real = export.CONVERTERS["tflite"]

    def off_by_a_bit(model, path, size):
        forward, details = real(model, path, size)
        return (lambda x: forward(x) + 1e-3), details

    monkeypatch.setitem(export.CONVERTERS, "tflite", off_by_a_bit)
    out = tmp_path / "out" / "m.tflite"
    with pytest.raises(ExportError, match="differ from Keras") as err:
        export_model(model_path, "tflite", out)
    assert err.value.exit_code == 1
    assert list(out.parent.iterdir()) == []  # no file, no sidecar, no staging folder


def test_onnx_without_its_packages_names_what_to_install(model_path, tmp_path, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "tf2onnx", None)  # import fails as if not installed
    with pytest.raises(ExportError, match="pip install"):
        export_model(model_path, "onnx", tmp_path / "m.onnx")
    assert not (tmp_path / "m.onnx").exists()


def test_check_cells_are_real_sample_cells_only_for_bloodlibs_classes():
    x, origin = export.check_images(["a", "b", "c"], 24)
    assert origin == "random" and x.shape == (export.CHECK_CELLS, 24, 24, 3)
    assert x.min() >= 0 and x.max() <= 255
    if not _sample_ok():
        pytest.skip("data/sample is incomplete in this checkout")
    x, origin = export.check_images(list(CLASSES), 24)
    assert origin == "sample" and x.shape == (export.CHECK_CELLS, 24, 24, 3)
    assert len({round(float(v), 3) for v in x.mean(axis=(1, 2, 3))}) == export.CHECK_CELLS


def test_mixed_precision_model_exports_in_float32(tmp_path):
    """Models trained under a mixed policy (bf16 on AMX CPUs) keep it in the file: TFLite
    refuses bf16 ops, so the export runs the same weights in float32 and says so."""
    import keras

    policy = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        model = tiny_models.vertex_classifier(SIZE)
    finally:
        keras.mixed_precision.set_global_policy(policy)
    model_path = save_classifier(model, tmp_path / "bf16.keras", {"name": "bf16", **INFO})
    out = tmp_path / "bf16.tflite"
    result = export_model(model_path, "tflite", out)
    assert result.source_precision == "mixed_bfloat16" and "float32" in result.report()
    x = images()
    assert np.max(np.abs(run_export("tflite", x, out) - keras_probs(model_path, x))) < 0.05
    info = json.loads(export_sidecar_path(out).read_text())
    assert info["precision"] == "float32" and info["source_precision"] == "mixed_bfloat16"


def test_cli_formats_are_exports_formats():
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    fmt = next(a for a in sub.choices["export"]._actions if a.dest == "format")
    assert tuple(fmt.choices) == tuple(export.FORMATS)


@pytest.mark.parametrize("fmt", list(export.FORMATS))
def test_a_cropping_classifier_exports_with_its_crop(fmt, tmp_path, capsys):
    """``FinetuneConfig.crop`` puts a CenterCrop layer in the model: every runtime keeps it."""
    if fmt == "onnx":
        pytest.importorskip("tf2onnx")
        pytest.importorskip("onnxruntime")
    from bloodlib.train.network import build_classifier
    from bloodlib.train.recipe import FinetuneConfig

    cfg = FinetuneConfig(backbone="tiny", image_size=SIZE, weights=None, crop=0.5, seed=3)
    model = build_classifier(cfg)
    assert any(layer.name == "centre_crop" for layer in model.layers[1].layers)
    path = save_classifier(model, tmp_path / "crop.keras", {"name": "crop", **INFO})
    out = tmp_path / "exported" / OUT_NAMES[fmt]
    assert main(["export", str(path), "--format", fmt, "--out", str(out)]) == 0
    x = images()
    x[:, : SIZE // 8] = 255.0  # a white border the crop removes: same answer with or without
    expected = keras_probs(path, x)
    assert np.max(np.abs(run_export(fmt, x, out) - expected)) < MAX_DIFF
    unbordered = images()
    assert np.allclose(keras_probs(path, unbordered), expected, atol=1e-6)
