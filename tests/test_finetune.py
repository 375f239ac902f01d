"""Design 2: fine-tuning with a tiny registered backbone; freezing, saving, resuming."""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import replace
from pathlib import Path

import keras
import numpy as np
import pandas as pd
import pytest
import tiny_models
from tiny_models import write_cell

from bloodlib import CLASSES
from bloodlib.data.pipeline import make_dataset
from bloodlib.models import backbones
from bloodlib.models.saved import read_sidecar
from bloodlib.predict.engine import load_classifier
from bloodlib.train import finetune, network, recipe
from bloodlib.train.finetune import load_history, train
from bloodlib.train.network import build_classifier, set_trainable
from bloodlib.train.recipe import FinetuneConfig

pytestmark = pytest.mark.unit

SIZE = tiny_models.SIZE
# "caffe" puts the custom CaffePreprocess layer inside the saved model.
TINY = tiny_models.backbone("tiny", tiny_models.convnet_builder, "caffe", feature_dim=8)


@pytest.fixture(autouse=True)
def tiny(monkeypatch):
    monkeypatch.setitem(backbones.REGISTRY, "tiny", TINY)


def config(**changes) -> FinetuneConfig:
    return tiny_models.finetune_config(**changes)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> tuple[pd.DataFrame, pd.DataFrame]:
    """32 training and 16 validation JPEGs, 8 classes, colour-coded by class."""
    root = tmp_path_factory.mktemp("finetune_data")

    def frame(part: str, per_class: int) -> pd.DataFrame:
        rows = []
        for c, cls in enumerate(CLASSES):
            for i in range(per_class):
                path = write_cell(root / part / cls / f"{i}.jpg", c, seed=1000 * c + i)
                rows.append({"path": str(path), "label": cls})
        return pd.DataFrame(rows)

    return frame("train", 4), frame("val", 2)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, data):
    """One finished run; the in-memory model is captured from ``build_classifier``."""
    run_dir = tmp_path_factory.mktemp("run")
    built = []
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(backbones.REGISTRY, "tiny", TINY)

        def capture(cfg, *args, **kwargs):
            built.append(build_classifier(cfg, *args, **kwargs))
            return built[-1]

        mp.setattr(finetune, "build_classifier", capture)
        start = time.perf_counter()
        result = train(config(), *data, run_dir, "tiny_ft", verbose=0)
        seconds = time.perf_counter() - start
    return result, run_dir, built[0], seconds


def test_train_writes_model_sidecar_and_history(trained):
    result, run_dir, _, _ = trained
    assert result.model_path == run_dir / "models" / "tiny_ft.keras"
    assert result.model_path.is_file()
    assert not result.resumed
    info = read_sidecar(result.model_path)
    assert json.loads(result.model_path.with_suffix(".json").read_text()) == info
    assert info["name"] == "tiny_ft"
    assert info["method"] == "finetune"
    assert info["backbone"] == "tiny"
    assert info["classes"] == list(CLASSES)
    assert info["image_size"] == SIZE
    assert info["preprocessing"] == "caffe"
    assert info["train_images"] == 32 and info["val_images"] == 16
    assert set(info["metrics"]) >= {"best_val_accuracy", "train_seconds"}
    assert info["metrics"]["best_val_accuracy"] == pytest.approx(result.best_val_accuracy)
    assert info["config"]["epochs_head"] == 1

    train_dir = run_dir / "train" / "tiny_ft"
    raw = pd.read_csv(train_dir / "history.csv")
    assert list(raw["epoch"]) == [0, 1]
    hist = load_history(train_dir)
    assert list(hist["phase"]) == ["head", "fine-tune"]
    assert {"loss", "accuracy", "val_loss", "val_accuracy"} <= set(hist.columns)
    assert list(result.history["epoch"]) == [0, 1]
    assert result.best_val_accuracy == pytest.approx(hist["val_accuracy"].max())
    assert (train_dir / "done.json").is_file() and (train_dir / "phase1.weights.h5").is_file()
    assert not list(result.model_path.parent.glob(".*"))  # atomic save: no temp files left


def test_loaded_classifier_matches_the_in_memory_model(trained, data):
    result, _, model, _ = trained
    paths = data[1]["path"].tolist()
    ds = make_dataset(paths, image_size=SIZE, batch_size=8)
    expected = model.predict(ds, verbose=0)
    clf = load_classifier(result.model_path)
    assert clf.classes == list(CLASSES) and clf.image_size == SIZE
    got = clf.predict_proba(paths, batch_size=5, progress=False)
    assert got.shape == (16, 8)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got.sum(axis=1), 1.0, atol=1e-5)


def test_finished_run_returns_at_once(trained, data, monkeypatch):
    result, run_dir, _, _ = trained

    def no_build(*args, **kwargs):
        raise AssertionError("a finished run must not build or train again")

    monkeypatch.setattr(finetune, "build_classifier", no_build)
    start = time.perf_counter()
    again = train(config(), *data, run_dir, "tiny_ft", verbose=0)
    assert time.perf_counter() - start < 2.0
    assert again.model_path == result.model_path
    assert again.resumed
    assert again.best_val_accuracy == pytest.approx(result.best_val_accuracy)
    assert list(again.history["epoch"]) == [0, 1]


def test_other_config_in_the_same_run_folder_trains_afresh(trained, data, tmp_path):
    _, run_dir, _, _ = trained
    copy = Path(shutil.copytree(run_dir, tmp_path / "run"))
    train_dir = copy / "train" / "tiny_ft"
    old_model = (copy / "models" / "tiny_ft.keras").read_bytes()

    result = train(config(epochs_finetune=2), *data, copy, "tiny_ft", verbose=0)
    assert not result.resumed  # not the finished model of the other configuration
    assert result.model_path.read_bytes() != old_model
    assert json.loads((train_dir / "config.json").read_text())["epochs_finetune"] == 2
    assert read_sidecar(result.model_path)["config"]["epochs_finetune"] == 2
    # One configuration per history: epochs 0, 1, 2 of this run only, each logged once.
    assert list(pd.read_csv(train_dir / "history.csv")["epoch"]) == [0, 1, 2]
    assert not list((copy / "train").glob(".*"))  # the discarded state is gone

    # The same configuration again is reused as it is.
    again = train(config(epochs_finetune=2), *data, copy, "tiny_ft", verbose=0)
    assert again.resumed and again.model_path.read_bytes() == result.model_path.read_bytes()


def test_interrupted_training_restores_the_precision_policy(data, tmp_path, monkeypatch):
    def boom(*args, **kwargs):
        assert keras.mixed_precision.global_policy().name == "mixed_bfloat16"
        raise KeyboardInterrupt  # as if the user stopped the cell mid-training

    monkeypatch.setattr(finetune, "build_classifier", boom)
    before = keras.mixed_precision.global_policy().name
    with pytest.raises(KeyboardInterrupt):
        train(config(precision="mixed_bfloat16"), *data, tmp_path, "tiny_ft", verbose=0)
    assert keras.mixed_precision.global_policy().name == before == "float32"


def _base(model):
    return model.layers[1].layers[-1]  # classifier -> "<backbone>_features" -> the backbone net


def test_set_trainable_phases():
    cfg = config(unfreeze_from_block=1)
    model = build_classifier(cfg)
    base = _base(model)
    assert {"block0_conv", "block0_bn", "block1_conv", "block1_bn"} <= {
        layer.name for layer in base.layers
    }

    n = set_trainable(model, cfg, phase=1)
    assert n == 2 == len(model.trainable_weights)  # the head's kernel and bias only
    assert not any(layer.trainable for layer in base.layers if layer.weights)
    assert model.get_layer("head").trainable

    n = set_trainable(model, cfg, phase=2)
    assert not base.get_layer("block0_conv").trainable
    assert base.get_layer("block1_conv").trainable
    assert not base.get_layer("block0_bn").trainable
    assert not base.get_layer("block1_bn").trainable  # BN statistics stay frozen
    assert n == 4 == len(model.trainable_weights)  # block1_conv + head

    everything = config(unfreeze_from_block=0, train_batchnorm=True)
    assert set_trainable(model, everything, phase=2) == 10  # 2 convs, 2 BNs, head
    assert all(layer.trainable for layer in base.layers)


def test_build_classifier_shapes():
    model = build_classifier(config())
    assert model.input_shape == (None, SIZE, SIZE, 3)
    assert model.output_shape == (None, len(CLASSES))
    assert model.get_layer("head").dtype_policy.name == "float32"


class Interrupt(keras.callbacks.BackupAndRestore):
    """Backs up as usual, then stops the process (Ctrl-C) at the end of epoch 1."""

    def on_epoch_end(self, epoch, logs=None):
        super().on_epoch_end(epoch, logs)
        if epoch == 1:
            raise KeyboardInterrupt


@pytest.mark.parametrize("ema_momentum", [0.0, 0.5])
def test_interrupted_run_resumes_where_it_stopped(tmp_path, data, monkeypatch, ema_momentum):
    cfg = config(epochs_head=1, epochs_finetune=2, ema_momentum=ema_momentum)
    train_dir = tmp_path / "train" / "tiny_ft"
    model_path = tmp_path / "models" / "tiny_ft.keras"

    monkeypatch.setattr(
        finetune, "atomic_backup", lambda path: Interrupt(str(path), double_checkpoint=True)
    )
    with pytest.raises(KeyboardInterrupt):
        train(cfg, *data, tmp_path, "tiny_ft", verbose=0)
    assert not model_path.exists()
    assert list(pd.read_csv(train_dir / "history.csv")["epoch"]) == [0, 1]
    assert (train_dir / "phase1.weights.h5").is_file()
    assert (train_dir / "backup_phase2").is_dir()

    seen: list[tuple[str, int]] = []

    class Recording(keras.callbacks.BackupAndRestore):
        def on_epoch_begin(self, epoch, logs=None):
            seen.append((Path(self.backup_dir).name, epoch))

    monkeypatch.setattr(
        finetune, "atomic_backup", lambda path: Recording(str(path), double_checkpoint=True)
    )
    result = train(cfg, *data, tmp_path, "tiny_ft", verbose=0)
    assert seen == [("backup_phase2", 2)]  # phase 1 not repeated; phase 2 from epoch 2, not 0
    assert result.resumed
    assert result.model_path == model_path and model_path.is_file()
    raw = pd.read_csv(train_dir / "history.csv")
    assert list(raw["epoch"]) == [0, 1, 2]  # every epoch logged exactly once
    assert list(result.history["phase"]) == ["head", "fine-tune", "fine-tune"]
    assert not (train_dir / "backup_phase2").exists()  # removed once the phase finished


def test_load_history_of_a_run_killed_before_its_first_epoch(tmp_path):
    (tmp_path / "history.csv").write_text("")
    hist = load_history(tmp_path, epochs_head=1)
    assert hist.empty and "phase" in hist.columns
    assert load_history(tmp_path / "nowhere").empty


def test_load_history_keeps_the_last_record_of_a_repeated_epoch(tmp_path):
    (tmp_path / "history.csv").write_text(
        "epoch,accuracy,loss,val_accuracy,val_loss\n"
        "0,0.1,2.0,0.1,2.0\n1,0.2,1.9,0.2,1.9\n1,0.3,1.8,0.3,1.8\n2,0.4,1.7,0.4,1.7\n"
    )
    (tmp_path / "config.json").write_text(json.dumps({"epochs_head": 2}))
    hist = load_history(tmp_path)
    assert list(hist["epoch"]) == [0, 1, 2]
    assert hist.loc[1, "accuracy"] == pytest.approx(0.3)
    assert list(hist["phase"]) == ["head", "head", "fine-tune"]


def test_inception_unfreezes_from_the_start_of_the_block():
    """`mixedK` closes block K in InceptionV3, so block 5 starts right after `mixed4`."""
    cfg = recipe.FinetuneConfig(
        backbone="inception_v3", image_size=75, weights=None, unfreeze_from_block=5
    )
    model = network.build_classifier(cfg)
    network.set_trainable(model, cfg, phase=2)
    base = model.layers[1].layers[-1]
    names = [layer.name for layer in base.layers]
    first_after = names.index("mixed4") + 1
    assert not base.get_layer("mixed4").trainable
    trainable_convs = [
        ly.name for ly in base.layers if ly.trainable and ly.__class__.__name__ == "Conv2D"
    ]
    assert trainable_convs and names.index(trainable_convs[0]) >= first_after
    # the first conv of block 5 (right after mixed4) is trainable
    first_conv = next(ly for ly in base.layers[first_after:] if ly.__class__.__name__ == "Conv2D")
    assert first_conv.trainable


def test_a_mixed_precision_model_is_saved_in_float32(tmp_path):
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        model = build_classifier(config())
    finally:
        keras.mixed_precision.set_global_policy("float32")
    assert model.layers[1].dtype_policy.name == "mixed_bfloat16"
    path = finetune.save_model(model, config(), tmp_path / "models" / "m.keras")
    loaded = load_classifier(path).model
    assert {layer.dtype_policy.name for layer in loaded.layers[1].layers} == {"float32"}
    for a, b in zip(loaded.get_weights(), model.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)


def test_head_on_features_trains_the_head_from_cached_features(data, tmp_path, monkeypatch):
    """Phase 1 on pooled features: the classifier's head gets the fitted weights, the
    backbone keeps its given weights, the history logs head epochs with timings, and a
    second training reads the features back from the cache."""
    monkeypatch.setenv("BLOODLIB_CACHE", str(tmp_path / "cache"))
    weights = tmp_path / "tiny.weights.h5"
    TINY.builder((SIZE, SIZE, 3), None).save_weights(weights)  # "pretrained" backbone weights
    cfg = config(head_on_features=True, epochs_head=3, epochs_finetune=0, weights=str(weights))
    result = train(cfg, *data, tmp_path / "run", "head_feat", verbose=0)
    hist = result.history
    assert list(hist["phase"]) == ["head"] * 3
    assert hist["seconds"].is_monotonic_increasing
    record = read_sidecar(result.model_path)["metrics"]["head_on_features"]
    assert record["features_cached"] is False
    assert list((tmp_path / "cache" / "features" / "tiny").glob("*.npy"))

    model = load_classifier(result.model_path).model
    fresh = build_classifier(cfg)
    # The head moved away from its initial weights; the frozen backbone did not.
    assert not np.allclose(
        model.get_layer("head").get_weights()[0], fresh.get_layer("head").get_weights()[0]
    )
    for a, b in zip(model.layers[1].get_weights(), fresh.layers[1].get_weights(), strict=True):
        np.testing.assert_allclose(a, b)
    # The whole classifier on the validation images = the fitted head on their features.
    from bloodlib.models import features

    val = data[1]
    feats = features.extract(
        val["path"].tolist(), finetune._hashes(val), "tiny", weights=str(weights), progress=False
    )
    assert feats.from_cache
    w, b = model.get_layer("head").get_weights()
    expected = keras.ops.convert_to_numpy(keras.activations.softmax(feats.features @ w + b))
    images = make_dataset(val["path"].tolist(), image_size=SIZE, batch_size=16)
    np.testing.assert_allclose(model.predict(images, verbose=0), expected, atol=1e-4)

    again = train(replace(cfg, epochs_head=2), *data, tmp_path / "run2", "head_feat", verbose=0)
    assert read_sidecar(again.model_path)["metrics"]["head_on_features"]["features_cached"]


def test_head_on_features_with_random_weights_caches_nothing(data, tmp_path, monkeypatch):
    """Random backbone weights are computed from the model itself and never cached."""
    monkeypatch.setenv("BLOODLIB_CACHE", str(tmp_path / "cache"))
    cfg = config(head_on_features=True, epochs_head=2, epochs_finetune=1, weights=None)
    result = train(cfg, *data, tmp_path / "run", "head_rand", verbose=0)
    assert list(result.history["phase"]) == ["head", "head", "fine-tune"]
    assert not (tmp_path / "cache" / "features").exists()


def test_warmup_schedule_starts_at_zero_and_peaks_at_the_learning_rate():
    cfg = config(learning_rate_finetune=1e-3, epochs_finetune=4, warmup_epochs=1.0)
    lr = network.learning_rate_finetune(cfg, steps_per_epoch=10)
    assert float(lr(0)) == pytest.approx(0.0)
    assert float(lr(10)) == pytest.approx(1e-3, rel=1e-3)
    assert float(lr(40)) < 1e-4
    with pytest.raises(ValueError, match="cosine"):
        network.learning_rate_finetune(replace(cfg, schedule="constant"), 10)


def test_time_to_accuracy_reads_the_first_epoch_at_target():
    hist = pd.DataFrame(
        {"val_accuracy": [0.5, 0.8, 0.79, 0.9], "seconds": [10.0, 20.0, 30.0, 40.0]}
    )
    assert finetune.time_to_accuracy(hist, 0.8) == 20.0
    assert finetune.time_to_accuracy(hist, 0.85) == 40.0
    assert finetune.time_to_accuracy(hist, 0.95) is None
    assert finetune.time_to_accuracy(hist.drop(columns="seconds"), 0.5) is None


@pytest.mark.unit
def test_whole_frame_is_the_same_network_without_its_crop():
    keras.utils.set_random_seed(4)
    cfg = config(crop=0.5, weights=None)
    cropped = build_classifier(cfg)
    assert tuple(cropped.layers[1].get_layer("centre_crop").output.shape[1:3]) == (SIZE // 2,) * 2
    whole = network.whole_frame(cropped, cfg)
    assert "centre_crop" not in [layer.name for layer in whole.layers[1].layers]
    assert tuple(whole.input.shape) == tuple(cropped.input.shape)
    assert tuple(whole.layers[1].layers[-1].input.shape[1:3]) == (SIZE, SIZE)  # the backbone's
    weights = zip(cropped.get_weights(), whole.get_weights(), strict=True)
    assert all(np.array_equal(a, b) for a, b in weights)
    # A frame whose centre is the same but whose margin differs: only the whole frame sees it.
    x = np.full((1, SIZE, SIZE, 3), 128.0, np.float32)
    y = x.copy()
    y[:, :4] = 255.0
    assert np.allclose(cropped(x), cropped(y))
    assert not np.allclose(whole(x), whole(y))
    assert network.whole_frame(whole, replace(cfg, crop=1.0)) is whole


def test_ema_is_what_validation_scores(data, tmp_path):
    """With a momentum of ~1 the average stays at phase 2's first step: validation (on the
    average) barely moves while the raw weights learn at a high rate."""
    cfg = config(
        epochs_finetune=3, learning_rate_finetune=3e-2, schedule="constant", ema_momentum=0.999999
    )
    result = train(cfg, *data, tmp_path, "tiny_ema", verbose=0)
    assert read_sidecar(result.model_path)["config"]["ema_momentum"] == 0.999999
    phase2 = result.history[result.history["phase"] == "fine-tune"]
    assert len(phase2) == 3
    np.testing.assert_allclose(phase2["val_loss"], phase2["val_loss"].iloc[0], rtol=1e-4)
    raw = train(replace(cfg, ema_momentum=0.0), *data, tmp_path, "tiny_raw", verbose=0)
    moved = raw.history[raw.history["phase"] == "fine-tune"]["val_loss"]
    assert np.ptp(moved) > 1e-3  # without the average, the same training moves validation


def test_training_identity_omits_the_defaults_added_later(data):
    """Runs trained before ``crop`` and ``ema_momentum`` existed keep their identity."""
    identity = finetune.training_identity(config(), *data)
    assert "crop" not in identity and "ema_momentum" not in identity
    assert finetune.training_identity(config(ema_momentum=0.99), *data)["ema_momentum"] == 0.99
