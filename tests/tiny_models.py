"""Tiny backbones and colour-coded images for the model-side tests.

Real backbones are far too slow for unit tests; these stand in for them
through ``bloodlib.models.backbones.REGISTRY`` (registered per test with
``monkeypatch.setitem``), so every code path that looks a backbone up by name
runs unchanged.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

SIZE = 32


def _load(model, weights):
    if weights not in (None, "imagenet"):
        model.load_weights(weights)
    return model


def mean_colour_builder(input_shape, weights):
    """1x1 conv with an identity kernel + average pooling: the features are the mean colour."""
    import keras

    inputs = keras.Input(input_shape)
    kernel = keras.initializers.Constant(np.eye(3, dtype=np.float32).reshape(1, 1, 3, 3))
    x = keras.layers.Conv2D(3, 1, kernel_initializer=kernel, name="block0_conv")(inputs)
    x = keras.layers.GlobalAveragePooling2D(name="avg_pool")(x)
    return _load(keras.Model(inputs, x, name="tiny_base"), weights)


def convnet_builder(input_shape, weights):
    """Two conv blocks (``block0_*``, ``block1_*``) with batch norm, average pooling on top."""
    import keras

    L = keras.layers
    inputs = keras.Input(input_shape, name="tiny_input")
    x = inputs
    for b, filters in enumerate((4, 8)):
        x = L.Conv2D(filters, 3, strides=2, padding="same", name=f"block{b}_conv")(x)
        x = L.BatchNormalization(name=f"block{b}_bn")(x)
        x = L.ReLU(name=f"block{b}_relu")(x)
    x = L.GlobalAveragePooling2D(name="avg_pool")(x)
    return _load(keras.Model(inputs, x, name="tiny_convnet"), weights)


def backbone(name: str, builder, preprocessing: str, feature_dim: int):
    from bloodlib.models.backbones import Backbone

    return Backbone(
        name=name,
        input_size=SIZE,
        preprocessing=preprocessing,
        builder=builder,
        feature_dim=feature_dim,
        weights_origin="unit test",
        block_pattern=r"block(\d+)_",
    )


def vertex(c: int) -> np.ndarray:
    """Class ``c`` (0..7) as a corner of the RGB cube: bit k of c switches channel k on."""
    return np.array([40 + 175 * ((c >> k) & 1) for k in range(3)], np.float32)


def cell(c: int, seed: int, size: int = 40) -> Image.Image:
    """A noisy image whose mean colour is ``vertex(c)``."""
    rng = np.random.default_rng(seed)
    arr = vertex(c) + rng.normal(0, 8, (size, size, 3))
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "RGB")


def write_cell(path: Path, c: int, seed: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    cell(c, seed).save(path, "JPEG", quality=92)
    return path


def vertex_classifier(image_size: int = SIZE):
    """A fine-tune-like model that classifies an image by the cube corner its mean colour is nearest.

    Input (s, s, 3) raw 0..255 -> Rescaling -> Conv -> GAP -> Dense(8, softmax); the
    weights are fixed, so what it predicts is known in advance.
    """
    import keras

    L = keras.layers
    inputs = keras.Input((image_size, image_size, 3), name="image")
    x = L.Rescaling(1 / 255.0, name="rescale")(inputs)
    x = L.Conv2D(3, 1, name="conv")(x)
    x = L.GlobalAveragePooling2D(name="gap")(x)
    outputs = L.Dense(8, activation="softmax", name="head")(x)
    model = keras.Model(inputs, outputs)
    model.get_layer("conv").set_weights(
        [np.eye(3, dtype=np.float32).reshape(1, 1, 3, 3), np.zeros(3, np.float32)]
    )
    sign = np.array([[2 * ((c >> k) & 1) - 1 for c in range(8)] for k in range(3)], np.float32)
    scale = 20.0
    model.get_layer("head").set_weights([scale * sign, -scale * 0.5 * sign.sum(axis=0)])
    return model


def finetune_config(**changes):
    """The smallest real fine-tuning: backbone "tiny" (register it first), one epoch a phase."""
    from bloodlib.train.recipe import FinetuneConfig

    base = dict(
        backbone="tiny",
        image_size=SIZE,
        batch_size=8,
        epochs_head=1,
        epochs_finetune=1,
        weights=None,
        precision="float32",
        seed=1,
    )
    return FinetuneConfig(**{**base, **changes})
