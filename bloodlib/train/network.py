"""The network of design 2 in Keras: backbone, dropout and a softmax head; what each phase
trains; the optimiser, the learning-rate schedule and the loss it is compiled with.

Notebook 03 writes the same few lines in the open; :func:`build_classifier` is them.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import keras

from bloodlib import CLASSES
from bloodlib.models import backbones
from bloodlib.train.recipe import (
    COSINE_FINAL_FRACTION,
    FinetuneConfig,
)


def build_classifier(cfg: FinetuneConfig, n_classes: int = len(CLASSES)):
    """Backbone (with its preprocessing) + dropout + softmax head. Input: raw 0..255 RGB."""

    size = cfg.size
    features = backbones.build_feature_extractor(cfg.backbone, size, cfg.weights, cfg.crop)
    inputs = keras.Input((size, size, 3), name="image")
    x = features(inputs)
    x = keras.layers.Dropout(cfg.dropout, name="head_dropout")(x)
    # float32 output keeps softmax and the loss numerically safe under mixed precision.
    outputs = keras.layers.Dense(n_classes, activation="softmax", dtype="float32", name="head")(x)
    return keras.Model(inputs, outputs, name=f"{cfg.backbone}_classifier")


def whole_frame(model, cfg: FinetuneConfig):
    """``model`` (built with ``cfg``) without its centre crop: the same weights, whole frame.

    The backbone is convolutional up to a global pooling, so it runs at any input size: the
    copy sees the whole frame at the pixel scale the model learnt. For other labs' cells,
    which fill their frame, where a crop would cut them (``adapt`` uses it). A model without
    a crop is returned as it is.
    """
    if cfg.crop == 1.0:
        return model
    whole = build_classifier(replace(cfg, crop=1.0, weights=None), model.output_shape[-1])
    whole.set_weights(model.get_weights())  # CenterCrop has no weights: the rest line up
    return whole


def set_trainable(model, cfg: FinetuneConfig, phase: int) -> int:
    """Freeze/unfreeze for a phase; returns the number of trainable weights tensors."""
    feat = model.layers[1]  # the "<backbone>_features" sub-model
    base = feat.layers[-1]  # the keras.applications / Lite0 network
    bb = backbones.get(cfg.backbone)
    if phase == 1:
        feat.trainable = False
    else:
        feat.trainable = True
        start = bb.block_start([layer.name for layer in base.layers], cfg.unfreeze_from_block)
        for n, layer in enumerate(base.layers):
            layer.trainable = n >= start
            if not cfg.train_batchnorm and layer.__class__.__name__ == "BatchNormalization":
                layer.trainable = False
    return len(model.trainable_weights)


def learning_rate_finetune(cfg: FinetuneConfig, steps_per_epoch: int):
    """Phase 2's learning rate: a float (``constant``) or a Keras cosine-decay schedule."""

    warmup = int(round(cfg.warmup_epochs * steps_per_epoch))
    if cfg.schedule == "cosine":
        total = max(1, steps_per_epoch * cfg.epochs_finetune)
        if warmup > 0:
            return keras.optimizers.schedules.CosineDecay(
                0.0,
                decay_steps=max(1, total - warmup),
                alpha=COSINE_FINAL_FRACTION,
                warmup_target=cfg.learning_rate_finetune,
                warmup_steps=warmup,
            )
        return keras.optimizers.schedules.CosineDecay(
            cfg.learning_rate_finetune, decay_steps=total, alpha=COSINE_FINAL_FRACTION
        )
    if cfg.schedule == "constant":
        if warmup > 0:
            raise ValueError("warmup_epochs needs schedule='cosine'")
        return cfg.learning_rate_finetune
    raise ValueError(f"unknown schedule {cfg.schedule!r}; use 'cosine' or 'constant'")


def optimizer(cfg: FinetuneConfig, lr, ema: bool = False):

    kw: dict[str, Any] = (
        {"use_ema": True, "ema_momentum": cfg.ema_momentum} if ema and cfg.ema_momentum else {}
    )
    if cfg.optimizer == "adamw":
        return keras.optimizers.AdamW(lr, weight_decay=cfg.weight_decay, **kw)
    if cfg.optimizer == "adam":
        return keras.optimizers.Adam(lr, **kw)
    if cfg.optimizer == "sgd":
        return keras.optimizers.SGD(lr, momentum=0.9, nesterov=True, **kw)
    raise ValueError(f"unknown optimizer {cfg.optimizer!r}")


def compile_model(model, cfg: FinetuneConfig, lr, ema: bool = False) -> None:

    model.compile(
        optimizer=optimizer(cfg, lr, ema),
        loss=keras.losses.CategoricalCrossentropy(label_smoothing=cfg.label_smoothing),
        metrics=[keras.metrics.CategoricalAccuracy(name="accuracy")],
    )


def float32_copy(model, cfg: FinetuneConfig):
    """``model`` itself when its layers compute in float32, else a float32 rebuild with its weights."""

    if all(layer.dtype_policy.name == "float32" for layer in model.layers[:-1]):
        return model
    policy = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy("float32")
    try:
        copy = build_classifier(replace(cfg, weights=None))  # weights come from ``model``
    finally:
        keras.mixed_precision.set_global_policy(policy)
    copy.set_weights(model.get_weights())
    return copy
