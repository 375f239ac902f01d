"""Views of a fine-tuning run (bloodlib.teach.lesson): model table, phases, schedule, best epoch."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import tiny_models

from bloodlib.models import backbones
from bloodlib.teach import lesson
from bloodlib.train.network import build_classifier
from bloodlib.train.recipe import FinetuneConfig

pytestmark = pytest.mark.unit

SIZE = tiny_models.SIZE
TINY = tiny_models.backbone("tiny", tiny_models.convnet_builder, "caffe", feature_dim=8)


@pytest.fixture(autouse=True)
def tiny(monkeypatch):
    monkeypatch.setitem(backbones.REGISTRY, "tiny", TINY)


def config(**changes) -> FinetuneConfig:
    base = dict(backbone="tiny", image_size=SIZE, batch_size=8, weights=None, seed=1)
    return FinetuneConfig(**{**base, **changes})


def _history(val_accuracy, epochs_head=2):
    n = len(val_accuracy)
    return pd.DataFrame(
        {
            "epoch": range(n),
            "val_accuracy": val_accuracy,
            "val_loss": np.linspace(1, 0.5, n),
            "phase": ["head"] * epochs_head + ["fine-tune"] * (n - epochs_head),
        }
    )


def test_best_epoch_is_one_based_and_first_on_ties():
    h = _history([0.5, 0.7, 0.9, 0.9, 0.8])
    assert lesson.best_epoch(h) == (3, 0.9)  # Keras saves on strict improvement only
    assert lesson.best_epoch(h, "val_loss", "min") == (5, 0.5)
    assert lesson.best_epoch(h.drop(columns="val_accuracy")) is None
    with pytest.raises(ValueError):
        lesson.best_epoch(h, mode="median")


def test_layer_table_and_trainable_by_phase():
    cfg = config(unfreeze_from_block=1)
    model = build_classifier(cfg)
    table = lesson.layer_table(model)
    assert table["layer"].tolist()[-2:] == ["head_dropout", "head"]
    assert "· tiny" in table["layer"].str.strip().tolist() or any(
        name.startswith("· ") for name in table["layer"]
    )
    head = table.set_index("layer").loc["head"]
    assert head["weights"] == 8 * 8 + 8  # 8 features -> 8 classes, plus biases
    assert table.loc[table["layer"] == "tiny_features", "weights"].item() == sum(
        int(np.prod(w.shape)) for w in model.layers[1].weights
    )

    phases = lesson.trainable_by_phase(model, cfg)
    assert phases["trainable tensors"].tolist() == [2, 4]  # head; then block1_conv + head
    assert phases["trainable parameters"].iloc[0] == 8 * 8 + 8
    total = phases["trainable parameters"] + phases["frozen parameters"]
    assert total.nunique() == 1
    assert phases["BatchNorm layers trained"].tolist() == ["0 of 2", "0 of 2"]
    assert len(model.trainable_weights) == 2  # left in phase 1
    trained_bn = lesson.trainable_by_phase(model, config(train_batchnorm=True))
    assert trained_bn["BatchNorm layers trained"].tolist() == ["0 of 2", "2 of 2"]


def test_learning_rate_curve_follows_the_training_schedule():
    cfg = config(
        epochs_head=2,
        epochs_finetune=3,
        learning_rate_head=1e-2,
        learning_rate_finetune=1e-3,
        max_train_images=20,
    )
    curve = lesson.learning_rate_curve(cfg, n_train=100)  # capped at 20: 3 steps of 8
    assert lesson.steps_per_epoch(cfg, 100) == 3
    assert len(curve) == 3 * (2 + 3)
    assert curve["phase"].tolist() == ["head"] * 6 + ["fine-tune"] * 9
    assert (curve.loc[curve["phase"] == "head", "learning_rate"] == 1e-2).all()
    fine = curve.loc[curve["phase"] == "fine-tune", "learning_rate"].to_numpy()
    assert fine[0] == pytest.approx(1e-3)
    assert np.all(np.diff(fine) < 0)  # cosine decay
    # Cosine decay over 9 steps towards 1 % of the start: step 8 of 9.
    expected = 1e-3 * (0.99 * 0.5 * (1 + np.cos(np.pi * 8 / 9)) + 0.01)
    assert fine[-1] == pytest.approx(expected, rel=1e-4)
    assert curve["epochs"].iloc[6] == pytest.approx(2.0)
    flat = lesson.learning_rate_curve(config(schedule="constant", epochs_head=0), 16)
    assert flat["learning_rate"].nunique() == 1


def test_training_sentence_states_the_log():
    cfg = config(epochs_head=2, epochs_finetune=4, early_stopping_patience=2)
    text = lesson.training_sentence(_history([0.5, 0.6, 0.8, 0.7, 0.75]), cfg)
    assert "5 of the 6 planned epochs" in text and "early stopping" in text
    assert "80.0% in epoch 3 (fine-tune phase)" in text
    assert "from 60.0% to 80.0%" in text
    worse = lesson.training_sentence(_history([0.5, 0.9, 0.8, 0.7, 0.6, 0.6]), cfg)
    assert "did not beat the head alone" in worse and "early stopping" not in worse
