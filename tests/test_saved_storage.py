"""A network stored as float16 (the shipped pbc-lite0): half the bytes, the same answers."""

from __future__ import annotations

import io
import zipfile

import numpy as np
import pytest

from bloodlib import CLASSES
from bloodlib.models.saved import open_model, require_bound, save_classifier

pytestmark = pytest.mark.unit

SIZE = 32


def _network():
    """Random weights, enough of them that the archive's overhead does not hide the halving."""
    import keras

    keras.utils.set_random_seed(0)
    L = keras.layers
    inputs = keras.Input((SIZE, SIZE, 3))
    x = L.Rescaling(1 / 255.0)(inputs)
    x = L.Conv2D(64, 3, padding="same", activation="relu")(x)
    x = L.Conv2D(64, 3, padding="same", activation="relu")(x)
    x = L.GlobalAveragePooling2D()(x)
    x = L.Dense(256, activation="relu")(x)
    return keras.Model(inputs, L.Dense(len(CLASSES), activation="softmax")(x))


INFO = {"method": "finetune", "backbone": "tiny", "classes": list(CLASSES), "image_size": SIZE}


def test_float16_storage_halves_the_file_and_keeps_the_answers(tmp_path):
    net = _network()
    full = save_classifier(net, tmp_path / "full.keras", INFO)
    half = save_classifier(net, tmp_path / "half.keras", INFO, storage="float16")
    assert half.stat().st_size < 0.6 * full.stat().st_size

    with zipfile.ZipFile(half) as archive:
        import h5py

        with h5py.File(io.BytesIO(archive.read("model.weights.h5")), "r") as h5:
            kinds = set()
            h5.visititems(lambda _, o: kinds.add(o.dtype) if isinstance(o, h5py.Dataset) else None)
    assert kinds == {np.dtype("float16")}

    saved = open_model(half)
    assert saved.info["storage"] == "float16"
    require_bound(saved, "adapt")  # the sidecar is bound to the float16 bytes
    assert {w.dtype for w in saved.model.weights} == {"float32"}  # it computes in float32
    x = np.random.default_rng(1).uniform(0, 255, (16, SIZE, SIZE, 3)).astype("float32")
    a = open_model(full).model.predict(x, verbose=0)
    b = saved.model.predict(x, verbose=0)
    assert np.abs(a - b).max() < 1e-2
    assert not np.array_equal(a, b)  # the weights really were rounded


def test_float16_storage_is_for_networks_only(tmp_path):
    with pytest.raises(ValueError, match="storage"):
        save_classifier(_network(), tmp_path / "m.keras", INFO, storage="int8")
    with pytest.raises(ValueError, match="only a network"):
        save_classifier(
            object(), tmp_path / "m.skops", {**INFO, "method": "svm"}, storage="float16"
        )
