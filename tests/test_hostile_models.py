"""Hostile model files, sidecars and output paths (issue 9, findings 1, 2 and 10).

Each test feeds what a careless or malicious user could hand over and checks that
nothing runs, nothing is overwritten, and the answer is a clear ``BloodlibError``
(CLI: exit code 2, no traceback). Keep these green.
"""

from __future__ import annotations

import json
import pickle
import shutil
import zipfile
from pathlib import Path

import joblib
import numpy as np
import pytest
import tiny_models
from tiny_models import write_cell

from bloodlib import CLASSES
from bloodlib.cli import main
from bloodlib.core.errors import BloodlibError, OutputPathError, UnsafeModelError
from bloodlib.core.paths import check_output
from bloodlib.models import saved, svm
from bloodlib.models.saved import SidecarError, save_classifier, sidecar_path
from bloodlib.predict import classify
from bloodlib.predict.classify import classify_folder
from bloodlib.predict.engine import load_classifier

pytestmark = pytest.mark.unit

SIZE = tiny_models.SIZE
INFO = {"method": "finetune", "backbone": "tiny", "classes": list(CLASSES), "image_size": SIZE}


class Payload:
    """Unpickling this creates ``marker``: the stand-in for any code a pickle could run."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def _touch_marker(x):  # referenced from a skops file: it must never be resolved and trusted
    Path("skops-marker").write_text("ran")
    return x


@pytest.fixture(autouse=True)
def tiny_backbone(monkeypatch):
    """``tiny``: the sidecars' backbone, with the 3 features the test SVM is trained on."""
    from bloodlib.models import backbones

    bb = tiny_models.backbone("tiny", tiny_models.mean_colour_builder, "none", feature_dim=3)
    monkeypatch.setitem(backbones.REGISTRY, "tiny", bb)


def write_raw_sidecar(model_path: Path, info) -> Path:
    """A sidecar as a user or an older bloodlib might have written it: no checks, no hash."""
    path = sidecar_path(model_path)
    path.write_text(json.dumps(info))
    return path


@pytest.fixture(scope="module")
def keras_model(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("run") / "models" / "m.keras"
    return save_classifier(tiny_models.vertex_classifier(SIZE), path, {"name": "m", **INFO})


@pytest.fixture
def model_copy(keras_model, tmp_path) -> Path:
    """A private copy of the saved model and its sidecar, free to be tampered with."""
    path = tmp_path / "models" / "m.keras"
    path.parent.mkdir()
    shutil.copy(keras_model, path)
    shutil.copy(sidecar_path(keras_model), sidecar_path(path))
    return path


@pytest.fixture
def cells(tmp_path) -> Path:
    folder = tmp_path / "cells"
    for c in range(3):
        write_cell(folder / f"cell_{c}.jpg", c, seed=c)
    return folder


@pytest.fixture(scope="module")
def pipeline():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(48, 3)) + np.repeat(np.arange(8), 6)[:, None]
    y = np.repeat(np.arange(8), 6)
    grid = [{"svc__kernel": ["linear"], "svc__C": [1.0]}]
    return svm.fit_svm(X, y, grid=grid, cv=2, n_jobs=1).model


def cli(capsys, *argv: str) -> tuple[int, str, str]:
    """Run ``classify`` in process; stderr with the CLI's line wrapping undone."""
    code = main(["classify", *map(str, argv)])
    out, err = capsys.readouterr()
    return code, out, " ".join(err.split())


# --- finding 1: a model file never runs code ---------------------------------------------


@pytest.mark.parametrize(
    ("name", "method"),
    [("old.joblib", "svm"), ("m.keras", "svm"), ("m.keras", "finetune"), ("m.skops", "svm")],
)
def test_pickle_in_any_disguise_is_refused_and_runs_nothing(
    tmp_path, cells, capsys, monkeypatch, name, method
):
    monkeypatch.chdir(tmp_path)
    marker = tmp_path / "pwned"
    model = tmp_path / "models" / name
    model.parent.mkdir()
    model.write_bytes(pickle.dumps(Payload(marker), protocol=4))
    write_raw_sidecar(model, {**INFO, "method": method})

    with pytest.raises(UnsafeModelError, match="pickle"):
        load_classifier(model)
    code, out, err = cli(capsys, model, cells, "--out", tmp_path / "p.csv")
    assert code == 2 and "Traceback" not in err and "pickle" in err
    assert not marker.exists() and not (tmp_path / "p.csv").exists()


def test_pickle_refusal_names_the_risk_and_the_way_out(tmp_path):
    model = tmp_path / "old.joblib"
    model.write_bytes(pickle.dumps(Payload(tmp_path / "pwned"), protocol=4))
    write_raw_sidecar(model, {**INFO, "method": "svm"})
    with pytest.raises(UnsafeModelError) as info:
        load_classifier(model)
    message = str(info.value)
    assert "arbitrary code" in message and "--trust-pickle" in message
    assert "re-save it as .skops" in message and "convert-model" in message
    assert not (tmp_path / "pwned").exists()


def test_trusted_old_pickle_loads_and_converts_to_skops(tmp_path, pipeline, capsys):
    old = tmp_path / "models" / "svm.joblib"
    old.parent.mkdir()
    joblib.dump(pipeline, old)
    write_raw_sidecar(old, {**INFO, "method": "svm"})
    with pytest.warns(UserWarning, match="no model_sha256"):
        clf = load_classifier(old, trust_pickle=True)
    assert clf.format == "pickle" and clf.model.predict_proba(np.zeros((1, 3))).shape == (1, 8)

    assert main(["convert-model", str(old)]) == 2  # refused without the flag
    assert "arbitrary code" in capsys.readouterr().err
    with pytest.warns(UserWarning):
        assert main(["convert-model", str(old), "--trust-pickle"]) == 0
    new = old.with_suffix(".skops")
    assert saved.sniff_format(new) == "skops"
    converted = load_classifier(new)  # bound sidecar now: no warning, no flag
    X = np.linspace(-1, 9, 12).reshape(4, 3)
    np.testing.assert_allclose(converted.model.predict_proba(X), pipeline.predict_proba(X))
    with pytest.raises(SidecarError, match="does not belong"):
        load_classifier(old, trust_pickle=True)  # the sidecar moved on with the conversion


def test_skops_with_an_untrusted_type_is_refused(tmp_path, pipeline, monkeypatch):
    import skops.io as sio
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import FunctionTransformer

    monkeypatch.chdir(tmp_path)
    hostile = Pipeline([("power", FunctionTransformer(_touch_marker)), *pipeline.steps[1:]])
    model = tmp_path / "evil.skops"
    sio.dump(hostile, model)
    write_raw_sidecar(model, {**INFO, "method": "svm"})
    with pytest.warns(UserWarning, match="no model_sha256"):
        clf = load_classifier(model)  # format, names and sidecar agree...
    with pytest.raises(UnsafeModelError, match="_touch_marker"):
        clf.model  # noqa: B018  (...but the content holds a function nobody trusted)
    assert not (tmp_path / "skops-marker").exists()


def test_skops_round_trip_needs_no_other_trusted_type(tmp_path, pipeline):
    import skops.io as sio

    path = svm.save(pipeline, tmp_path / "m.skops")
    # The constant is what a real fitted pipeline needs: neither more nor less.
    assert sorted(sio.get_untrusted_types(file=path)) == sorted(svm.TRUSTED_TYPES)
    X = np.linspace(-1, 9, 12).reshape(4, 3)
    np.testing.assert_allclose(svm.load(path).predict_proba(X), pipeline.predict_proba(X))


def test_keras_file_loads_in_safe_mode(tmp_path):
    import keras

    inputs = keras.Input((SIZE, SIZE, 3))
    x = keras.layers.GlobalAveragePooling2D()(inputs)
    x = keras.layers.Lambda(lambda t: t * 1.0)(x)  # code in the file: safe mode refuses it
    outputs = keras.layers.Dense(8, activation="softmax")(x)
    model = tmp_path / "lambda.keras"
    save_classifier(keras.Model(inputs, outputs), model, INFO)
    clf = load_classifier(model)
    with pytest.raises(UnsafeModelError, match="safe mode"):
        clf.model  # noqa: B018


def test_format_is_sniffed_from_bytes(keras_model, tmp_path, pipeline):
    assert saved.sniff_format(keras_model) == "keras"
    assert saved.sniff_format(svm.save(pipeline, tmp_path / "s.skops")) == "skops"
    (tmp_path / "p").write_bytes(pickle.dumps([1, 2]))
    assert saved.sniff_format(tmp_path / "p") == "pickle"
    with zipfile.ZipFile(tmp_path / "z.keras", "w") as zf:
        zf.writestr("config.json", "{}")
    assert saved.sniff_format(tmp_path / "z.keras") == "unknown"  # no metadata.json
    # A real Keras file named .skops: its name hides its format.
    disguised = tmp_path / "k.skops"
    shutil.copy(keras_model, disguised)
    write_raw_sidecar(disguised, {**INFO, "method": "svm"})
    with pytest.raises(UnsafeModelError, match="named .skops"):
        load_classifier(disguised)
    # The format decides the loader; a sidecar naming the other method is refused.
    mismatched = tmp_path / "k.keras"
    shutil.copy(keras_model, mismatched)
    write_raw_sidecar(mismatched, {**INFO, "method": "svm"})
    with pytest.raises(UnsafeModelError, match="sidecar says method 'svm'"):
        load_classifier(mismatched)
    write_raw_sidecar(tmp_path / "s.skops", INFO)  # method finetune beside an SVM
    with pytest.raises(UnsafeModelError, match="sidecar says method 'finetune'"):
        load_classifier(tmp_path / "s.skops")


# --- finding 2: --out never clobbers an input --------------------------------------------


@pytest.mark.parametrize("target", ["image", "model", "sidecar", "folder_csv", "text"])
def test_out_onto_an_input_is_refused_before_any_work(
    model_copy, cells, tmp_path, capsys, monkeypatch, target
):
    out = {
        "image": cells / "cell_0.jpg",
        "model": model_copy,
        "sidecar": sidecar_path(model_copy),
        "folder_csv": cells / "predictions.csv",  # would be classified next time
        "text": tmp_path / "notes.txt",
    }[target]
    if target == "text":
        out.write_text("my notes\n")
    before = {p: p.read_bytes() for p in [*cells.iterdir(), model_copy, sidecar_path(model_copy)]}
    before_out = out.read_bytes() if out.exists() else None

    def no_work(*args, **kwargs):
        pytest.fail("classification started before --out was checked")

    monkeypatch.setattr(classify, "load_classifier", no_work)
    with pytest.raises(OutputPathError):
        classify_folder(model_copy, cells, out, progress=False)
    code, stdout, err = cli(capsys, model_copy, cells, "--out", out)
    assert code == 2 and "Traceback" not in err and "--out" in err
    assert "classified" not in stdout
    assert {p: p.read_bytes() for p in before} == before
    assert (out.read_bytes() if out.exists() else None) == before_out
    assert not (cells / "predictions.csv").exists()


def test_out_through_a_symlink_onto_an_input_is_refused(model_copy, cells, tmp_path):
    link = tmp_path / "harmless.csv"
    link.symlink_to(cells / "cell_1.jpg")
    before = (cells / "cell_1.jpg").read_bytes()
    with pytest.raises(OutputPathError, match="inside the folder"):
        classify_folder(model_copy, cells, link, progress=False)
    assert (cells / "cell_1.jpg").read_bytes() == before


def test_out_into_a_missing_folder_is_created(model_copy, cells, tmp_path, capsys):
    out = tmp_path / "new" / "deeper" / "p.csv"
    code, stdout, err = cli(capsys, model_copy, cells, "--out", out, "--engine", "keras")
    assert code == 0, err
    assert out.is_file() and "classified 3 images" in stdout


def test_out_that_cannot_be_created_fails_before_classifying(model_copy, cells, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("a file, not a folder")
    with pytest.raises(OutputPathError, match="cannot create"):
        classify_folder(model_copy, cells, blocker / "p.csv", progress=False)


@pytest.mark.parametrize(
    "out", ["m.keras", "m.json", "m.h5", "sub/../m.keras", "link.keras", "elsewhere.keras"]
)
def test_the_shared_output_check_sees_through_names(tmp_path, out):
    """classify, adapt, ensemble and export share this check (core.paths.check_output): the
    model, its sidecar (also through a model of another suffix, whose sidecar is the same
    file), ``..`` and symbolic links."""
    model = tmp_path / "m.keras"
    model.write_bytes(b"model")
    sidecar_path(model).write_text("{}")
    (tmp_path / "sub").mkdir()
    (tmp_path / "link.keras").symlink_to(model)
    target = tmp_path / out
    inputs = [model, sidecar_path(model)]
    if out == "elsewhere.keras":
        check_output(target, writes=[sidecar_path(target)], inputs=[tmp_path / "x.keras", *inputs])
        return
    with pytest.raises(OutputPathError, match="would overwrite the input m"):
        check_output(target, writes=[sidecar_path(target)], inputs=inputs)
    # An export's sidecar is named otherwise: its own clash is caught the same way.
    with pytest.raises(OutputPathError, match="would overwrite"):
        check_output(tmp_path / "e.onnx", writes=[sidecar_path(model)], inputs=inputs)


@pytest.mark.parametrize("option", ["--batch-size", "--workers"])
@pytest.mark.parametrize("value", ["0", "-3", "x"])
def test_numeric_options_are_checked_by_argparse(
    model_copy, cells, tmp_path, capsys, option, value
):
    with pytest.raises(SystemExit) as exit_info:
        main(["classify", str(model_copy), str(cells), "--out", str(tmp_path / "p.csv"),
              option, value])  # fmt: skip
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert option in err and "Traceback" not in err


# --- finding 10: sidecars are validated and tied to their model ---------------------------


SIDECARS = {
    "a list": list(CLASSES),
    "no method": {k: v for k, v in INFO.items() if k != "method"},
    "unknown method": {**INFO, "method": "pickle"},
    "classes a string": {**INFO, "classes": "basophil"},
    "duplicate classes": {**INFO, "classes": [*CLASSES[:7], "Basophil"]},
    "size a string": {**INFO, "image_size": "32"},
    "size zero": {**INFO, "image_size": 0},
    "no backbone": {k: v for k, v in INFO.items() if k != "backbone"},
    "bad hash": {**INFO, "model_sha256": "abc"},
}


@pytest.mark.parametrize("case", sorted(SIDECARS))
def test_malformed_sidecar_is_a_clear_error(model_copy, cells, tmp_path, capsys, case):
    write_raw_sidecar(model_copy, SIDECARS[case])
    with pytest.raises(SidecarError, match="sidecar"):
        load_classifier(model_copy)
    code, _, err = cli(capsys, model_copy, cells, "--out", tmp_path / "p.csv")
    assert code == 2 and "Traceback" not in err and "error:" in err


def test_sidecar_that_is_not_json(model_copy):
    sidecar_path(model_copy).write_text("{'method': 'svm'")
    with pytest.raises(SidecarError, match="not valid JSON"):
        load_classifier(model_copy)


@pytest.mark.parametrize("n", [3, 10])
def test_class_count_must_match_the_network(model_copy, cells, tmp_path, capsys, n):
    names = [f"class{i}" for i in range(n)]
    # An edited bound sidecar: the binding catches it at once.
    info = json.loads(sidecar_path(model_copy).read_text())
    write_raw_sidecar(model_copy, {**info, "classes": names})
    with pytest.raises(SidecarError, match="edited after the model was saved"):
        load_classifier(model_copy)
    # A sidecar without a hash whose classes are not bloodlib's: nothing proves them (issue 35).
    write_raw_sidecar(model_copy, {**INFO, "classes": names})
    with pytest.raises(SidecarError, match="records no model_sha256.*not bloodlib's"):
        load_classifier(model_copy)
    code, _, err = cli(capsys, model_copy, cells, "--out", tmp_path / "p.csv")
    assert code == 2 and "Traceback" not in err and "records no model_sha256" in err
    assert not (tmp_path / "p.csv").exists()


def test_cached_tflite_copy_is_checked_against_the_sidecar(cells, tmp_path):
    import keras

    inputs = keras.Input((SIZE, SIZE, 3))
    three = keras.Model(
        inputs,
        keras.layers.Dense(3, activation="softmax")(keras.layers.GlobalAveragePooling2D()(inputs)),
    )
    path = tmp_path / "models" / "three.keras"
    save_classifier(three, path, {**INFO, "classes": ["a", "b", "c"]})
    classify_folder(path, cells, None, progress=False, engine="tflite")  # caches a copy
    # A hash-less ("older") sidecar with bloodlib's classes loads, loudly; the cached copy
    # still has to answer as many classes as it lists.
    write_raw_sidecar(path, {**INFO, "classes": list(CLASSES)})
    with pytest.warns(UserWarning, match="no model_sha256"):
        clf = load_classifier(path)
    with pytest.raises(SidecarError, match="answers 3 classes"):
        clf.prepare("tflite")
    assert clf._model is None  # the cached copy answered, the Keras model was never loaded


def test_reordered_classes_are_a_hash_mismatch(model_copy, cells, tmp_path, capsys):
    info = json.loads(sidecar_path(model_copy).read_text())
    write_raw_sidecar(model_copy, {**info, "classes": info["classes"][::-1]})
    with pytest.raises(SidecarError, match="edited after the model was saved"):
        load_classifier(model_copy)
    code, _, err = cli(capsys, model_copy, cells, "--out", tmp_path / "p.csv")
    assert code == 2 and "Traceback" not in err and "reordered classes" in err


def test_sidecar_of_another_model_does_not_belong(model_copy, tmp_path):
    other = tmp_path / "other.keras"
    save_classifier(
        tiny_models.vertex_classifier(SIZE + 8), other, {**INFO, "image_size": SIZE + 8}
    )
    shutil.copy(sidecar_path(other), sidecar_path(model_copy))
    with pytest.raises(SidecarError, match="does not belong to this model file"):
        load_classifier(model_copy)


def test_unrelated_three_output_network(tmp_path, cells, capsys):
    import keras

    inputs = keras.Input((SIZE, SIZE, 3))
    x = keras.layers.GlobalAveragePooling2D()(inputs)
    model = keras.Model(inputs, keras.layers.Dense(3, activation="softmax")(x))
    path = tmp_path / "unrelated.keras"
    model.save(path)
    write_raw_sidecar(path, INFO)
    with pytest.warns(UserWarning):
        code, _, err = cli(capsys, path, cells, "--out", tmp_path / "p.csv")
    assert code == 2 and "Traceback" not in err
    assert "(None, 3)" in err and "8 classes" in err
    # Saving refuses the same mismatch before anything is written.
    with pytest.raises(SidecarError, match="8 classes"):
        save_classifier(model, tmp_path / "new.keras", INFO)
    assert not (tmp_path / "new.keras").exists()


def test_old_sidecar_without_hash_loads_with_a_warning(model_copy):
    info = json.loads(sidecar_path(model_copy).read_text())
    del info["model_sha256"], info["binding_sha256"]
    write_raw_sidecar(model_copy, info)
    with pytest.warns(UserWarning, match="older bloodlib"):
        clf = load_classifier(model_copy)
    assert clf.classes == list(CLASSES)


def test_every_refusal_is_a_bloodlib_error():
    for cls in (SidecarError, UnsafeModelError, OutputPathError):
        assert issubclass(cls, BloodlibError) and cls("x").exit_code == 2


# --- finding 10: odd class folder names are scored -----------------------------------------


def test_capitalised_class_folders_are_scored(model_copy, tmp_path):
    folder = tmp_path / "labelled"
    for i in range(2):
        write_cell(folder / "Basophil" / f"b{i}.jpg", 0, seed=i)
        write_cell(folder / "EOSINOPHIL" / f"e{i}.jpg", 1, seed=10 + i)
    write_cell(folder / "unsorted" / "u.jpg", 2, seed=20)
    result = classify_folder(model_copy, folder, None, progress=False, engine="keras")
    assert result.metrics is not None and result.metrics["n"] == 4
    assert result.metrics["accuracy"] == pytest.approx(1.0)
    labels = result.table.set_index("relpath")["label"]
    assert labels["Basophil/b0.jpg"] == "basophil" and labels["EOSINOPHIL/e1.jpg"] == "eosinophil"
    # The folder that names no class is reported, not silently dropped.
    assert result.unscored == {"unsorted": 1}
    assert "NOT scored" in result.report() and "unsorted (1)" in result.report()


def test_cli_process_refuses_a_pickle_without_traceback(tmp_path):
    """The reported reproduction, as a user runs it: a separate ``python -m bloodlib``."""
    import os
    import subprocess
    import sys

    marker = tmp_path / "pwned"
    model = tmp_path / "shared.joblib"
    model.write_bytes(pickle.dumps(Payload(marker), protocol=4))
    write_raw_sidecar(model, {**INFO, "method": "svm"})
    (tmp_path / "cells").mkdir()
    root = Path(__file__).resolve().parent.parent
    env = {**os.environ, "PYTHONPATH": str(root), "TF_CPP_MIN_LOG_LEVEL": "2"}
    proc = subprocess.run(
        [sys.executable, "-m", "bloodlib", "classify", str(model), str(tmp_path / "cells"),
         "--out", str(tmp_path / "p.csv")],
        capture_output=True, text=True, env=env, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr and "arbitrary code" in " ".join(proc.stderr.split())
    assert not marker.exists() and not (tmp_path / "p.csv").exists()


def test_svm_sidecar_must_name_the_backbone_of_its_features(tmp_path, pipeline):
    model = svm.save(pipeline, tmp_path / "s.skops")  # trained on 3 features
    write_raw_sidecar(model, {**INFO, "method": "svm"})
    with pytest.warns(UserWarning):
        assert load_classifier(model).model is not None
    for backbone, problem in [("efficientnet_lite0", "reads 3 features"), ("nonet", "not one")]:
        write_raw_sidecar(model, {**INFO, "method": "svm", "backbone": backbone})
        with pytest.warns(UserWarning):
            clf = load_classifier(model)
        with pytest.raises(SidecarError, match=problem):
            clf.prepare()
