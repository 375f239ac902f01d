"""Prediction engines (Keras, cached TFLite copy) and test-time augmentation."""

from __future__ import annotations

import numpy as np
import pytest
import tiny_models
from tiny_models import write_cell

from bloodlib import CLASSES
from bloodlib.models.saved import save_classifier
from bloodlib.predict import inference
from bloodlib.predict.classify import classify_folder
from bloodlib.predict.engine import load_classifier

pytestmark = pytest.mark.unit

SIZE = tiny_models.SIZE


@pytest.fixture(scope="module")
def convnet():
    """Conv + batch norm + dense softmax with random weights: not rotation invariant."""
    import keras

    keras.utils.set_random_seed(0)
    base = tiny_models.convnet_builder((SIZE, SIZE, 3), None)
    out = keras.layers.Dense(len(CLASSES), activation="softmax")(base.output)
    model = keras.Model(base.input, out)
    # Non-trivial batch-norm statistics, so the converted graph has something to fold.
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            mean, var = layer.moving_mean, layer.moving_variance
            mean.assign(np.linspace(-1, 1, mean.shape[0]).astype("float32"))
            var.assign(np.linspace(0.5, 2, var.shape[0]).astype("float32"))
    return model


def images(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0, 255, (n, SIZE, SIZE, 3)).astype("float32")


def test_dihedral_views_are_the_eight_symmetries():
    x = np.arange(2 * 4 * 4 * 1, dtype=np.float32).reshape(2, 4, 4, 1)
    views = inference.dihedral_views(x)
    assert len(views) == inference.TTA_VIEWS == 8
    assert np.array_equal(views[0], x)
    assert len({v.tobytes() for v in views}) == 8  # all distinct for an asymmetric image
    # A closed group: every view of a view is again one of the eight.
    seen = {v.tobytes() for v in views}
    assert all(w.tobytes() in seen for v in views for w in inference.dihedral_views(v))
    # An image symmetric under all eight maps to eight equal views.
    sym = np.ones((1, 4, 4, 1), np.float32)
    sym[0, 1:3, 1:3] = 5
    assert all(np.array_equal(v, sym) for v in inference.dihedral_views(sym))


def test_tflite_matches_keras_including_a_padded_last_batch(convnet):
    x = images(7)
    keras_out = inference.keras_forward(convnet)(x)
    forward, engine = inference.forward_fn(
        convnet, model_sha256="a" * 64, engine="tflite", batch_size=3
    )
    assert engine == "tflite"
    lite_out = forward(x)  # 3 + 3 + 1 (padded)
    assert lite_out.shape == keras_out.shape == (7, len(CLASSES))
    np.testing.assert_allclose(lite_out, keras_out, atol=1e-5)
    np.testing.assert_allclose(lite_out.sum(axis=1), 1.0, atol=1e-5)


def test_tflite_copy_is_converted_once_per_model(convnet, monkeypatch):
    inference.forward_fn(convnet, model_sha256="b" * 64, engine="tflite")
    cached = inference.tflite_cache_path("b" * 64)
    assert cached.is_file() and cached.stat().st_size > 0

    def fail(*a, **k):
        raise AssertionError("converted again although a cached copy exists")

    monkeypatch.setattr(inference, "convert_to_tflite", fail)
    _, engine = inference.forward_fn(convnet, model_sha256="b" * 64, engine="tflite")
    assert engine == "tflite"


def test_failed_conversion_falls_back_under_auto_and_fails_when_asked_for(convnet, monkeypatch):
    def broken(*a, **k):
        raise ValueError("unsupported op")

    monkeypatch.setattr(inference, "convert_to_tflite", broken)
    monkeypatch.setattr(inference, "gpu_visible", lambda: False)
    with pytest.warns(UserWarning, match="unsupported op"):
        forward, engine = inference.forward_fn(convnet, model_sha256="c" * 64, engine="auto")
    assert engine == "keras"
    assert forward(images(2)).shape == (2, len(CLASSES))
    with pytest.raises(RuntimeError, match="--engine keras"):
        inference.forward_fn(convnet, model_sha256="c" * 64, engine="tflite")
    with pytest.raises(ValueError, match="engine must be one of"):
        inference.resolve_engine("onnx")


def test_auto_engine_follows_the_hardware(monkeypatch):
    monkeypatch.setattr(inference, "gpu_visible", lambda: False)
    assert inference.resolve_engine("auto") == "tflite"
    monkeypatch.setattr(inference, "gpu_visible", lambda: True)
    assert inference.resolve_engine("auto") == "keras"
    assert inference.resolve_engine("tflite") == "tflite"


def test_tta_averages_the_model_over_the_eight_views(convnet):
    forward = inference.keras_forward(convnet)
    x = images(5, seed=1)
    batches = [x[:2], x[2:]]
    plain = inference.predict_batches(forward, batches, progress=False)
    tta = inference.predict_batches(forward, batches, tta=True, progress=False)
    expected = np.mean([forward(v) for v in inference.dihedral_views(x)], axis=0)
    np.testing.assert_allclose(plain, forward(x), atol=1e-6)
    np.testing.assert_allclose(tta, expected, atol=1e-6)
    assert not np.allclose(tta, plain, atol=1e-4)  # the views do disagree for this network
    # TTA is invariant to a flip or rotation of the input, plain prediction is not.
    rotated = np.rot90(x, 1, axes=(1, 2))
    tta_rot = inference.predict_batches(forward, [rotated], tta=True, progress=False)
    np.testing.assert_allclose(tta_rot, tta, atol=1e-5)


def test_views_come_from_one_pass_over_the_decoded_batches(convnet):
    """Several transforms of the same images: one array each, equal to predicting each
    transform separately, from batches that can be read only once (decoded once)."""
    forward = inference.keras_forward(convnet)
    x = images(5, seed=2)
    reads = []

    def darker(b):
        return b * 0.5

    def flipped(b):
        return b[:, :, ::-1]

    def once():  # a generator: a second pass over it would find nothing
        for b in (x[:3], x[3:]):
            reads.append(len(b))
            yield b

    got = inference.predict_views(forward, once(), [None, darker, flipped], progress=False)
    assert reads == [3, 2]
    for p, t in zip(got, [None, darker, flipped], strict=True):
        want = inference.predict_batches(forward, [x if t is None else t(x)], progress=False)
        np.testing.assert_allclose(p, want, atol=1e-6)
    assert not np.allclose(got[0], got[1], atol=1e-4)  # the transforms did change the answers
    tta = inference.predict_views(forward, [x], [None, darker], tta=True, progress=False)
    want = inference.predict_batches(forward, [darker(x)], tta=True, progress=False)
    np.testing.assert_allclose(tta[1], want, atol=1e-6)
    with pytest.raises(ValueError, match="at least one transform"):
        inference.predict_views(forward, [x], [], progress=False)


@pytest.fixture
def saved_convnet(convnet, tmp_path):
    path = tmp_path / "models" / "c.keras"
    return save_classifier(
        convnet,
        path,
        {
            "name": "c",
            "method": "finetune",
            "backbone": "tiny",
            "classes": list(CLASSES),
            "image_size": SIZE,
        },
    )


def test_classify_engines_agree_and_report_what_they_used(saved_convnet, tmp_path):
    folder = tmp_path / "cells"
    for c in range(6):
        write_cell(folder / f"cell_{c}.jpg", c, seed=c)
    runs = {
        e: classify_folder(saved_convnet, folder, None, batch_size=4, progress=False, engine=e)
        for e in ("keras", "tflite")
    }
    assert runs["keras"].engine == "keras" and runs["tflite"].engine == "tflite"
    p = {e: r.table[[f"p_{c}" for c in CLASSES]].to_numpy(float) for e, r in runs.items()}
    np.testing.assert_allclose(p["tflite"], p["keras"], atol=1e-5)
    tta = classify_folder(saved_convnet, folder, None, batch_size=4, progress=False, tta=True)
    assert tta.tta and "test-time augmentation" in tta.report()
    assert not np.allclose(tta.table[[f"p_{c}" for c in CLASSES]].to_numpy(float), p["keras"])


def test_classifier_reuses_its_engine_between_calls(saved_convnet, tmp_path, monkeypatch):
    folder = tmp_path / "cells"
    paths = [str(write_cell(folder / f"c{i}.jpg", i, seed=i)) for i in range(3)]
    clf = load_classifier(saved_convnet)
    first = clf.predict_proba(paths, progress=False, engine="tflite")
    monkeypatch.setattr(
        inference, "forward_fn", lambda *a, **k: pytest.fail("engine rebuilt on the second call")
    )
    np.testing.assert_array_equal(clf.predict_proba(paths, progress=False, engine="tflite"), first)


def test_decoded_chunks_are_the_pipelines_images_in_order(tmp_path):
    """classify's decoder hands over whole chunks, in file order, with the training pixels."""
    from bloodlib.data.pipeline import make_dataset

    paths = [
        str(write_cell(tmp_path / f"c{i:02d}.jpg", i % len(CLASSES), seed=i)) for i in range(7)
    ]
    chunks = list(inference.decoded_chunks(paths, SIZE, batch_size=2, chunk_batches=1))
    assert [len(c) for c in chunks] == [2, 2, 2, 1]
    expected = np.concatenate([x.numpy() for x in make_dataset(paths, image_size=SIZE)])
    np.testing.assert_array_equal(np.concatenate(chunks), expected)
