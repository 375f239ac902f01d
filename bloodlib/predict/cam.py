"""Where the network looks: Grad-CAM class-activation maps for saved classifiers.

Grad-CAM (Selvaraju et al., "Grad-CAM: Visual Explanations from Deep Networks
via Gradient-based Localization", ICCV 2017) weights each channel ``k`` of a
convolutional feature map ``A`` by the spatial mean of the gradient of the class
score ``y_c`` (the logit, before the softmax), sums, and keeps the positive part::

    alpha_k = mean_ij  d y_c / d A_ij^k        L_c = ReLU( sum_k alpha_k A^k )

The map is upsampled to the input size and scaled to [0, 1] per image.

A bloodlib classifier nests its backbone as a sub-model (``image -> <backbone>_features
-> dropout -> head``, the features model itself wrapping the network), so the
feature map is a tensor of the inner graph. Asking for it from the outer model
raises Keras' "Graph disconnected" error. Here the classifier is instead cut
at the feature map, level by level, into plain models whose inputs and outputs
are tensors of one graph each (the same layers, hence the same weights): an
"up to the map" chain and a "from the map" chain, run under a
``tf.GradientTape``. The softmax of the head is replaced by a linear copy of
the same layer, so the score is the logit Selvaraju et al. use (a saturated
softmax has no gradient left: a 0.99999 cell would get an empty map).

TensorFlow is imported on first use: importing this module is cheap.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import keras
import numpy as np
import pandas as pd
import tensorflow as tf

from bloodlib.core.config import DEFAULT_SEED
from bloodlib.core.errors import BloodlibError
from bloodlib.data.pipeline import load_images
from bloodlib.models.backbones import leaves

#: Images per forward/backward pass: bounds memory (a 224 px Lite0 batch of 16 needs ~0.5 GB).
BATCH_SIZE = 16


class CamError(BloodlibError, ValueError):
    """Grad-CAM cannot be computed as asked (wrong input shape, unknown layer, bad class)."""


@dataclass
class _Split:
    """A model cut at a feature map: ``head(features(x))`` are the class scores."""

    layer_name: str
    features: Callable[[Any], Any]
    head: Callable[[Any], Any]


# One split per (model, layer): building the cut models walks the whole graph.
_SPLITS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def keras_model(model: Any) -> Any:
    """The Keras model inside a ``bloodlib.predict.engine.Classifier``, or ``model`` itself."""
    if hasattr(model, "predict_proba") and hasattr(model, "info"):
        if model.info.get("method") == "svm":
            raise CamError(
                f"{model.path.name} is an SVM on pooled backbone features: Grad-CAM needs a "
                "fine-tuned network (a .keras model)"
            )
        return model.model
    return model


def _is_model(layer: Any) -> bool:
    return hasattr(layer, "layers") and hasattr(layer, "inputs")


def _rank(layer: Any) -> int | None:
    try:
        return len(layer.output.shape)
    except (AttributeError, ValueError):  # no output, or one layer called at several places
        return None


def _find_path(model: Any, layer: str | None) -> list[Any] | None:
    """``[model, sub-model, ..., target layer]``: by name, or the last 4-D map if ``layer`` is None."""
    for sub in reversed(model.layers):  # layers are in topological order: the last map is last
        if _is_model(sub):
            found = _find_path(sub, layer)
            if found is not None:
                return [model, *found]
        if sub.__class__.__name__ == "InputLayer":
            continue
        if (layer is None and _rank(sub) == 4) or (layer is not None and sub.name == layer):
            return [model, sub]
    return None


def _node_in(sub: Any, parent: Any) -> Any:
    """The call of nested model ``sub`` that belongs to ``parent``'s graph."""
    by_depth = getattr(parent, "_nodes_by_depth", None)
    nodes = sub._inbound_nodes
    if by_depth is not None:
        mine = {id(n) for level in by_depth.values() for n in level}
        nodes = [n for n in nodes if id(n) in mine]
    if len(nodes) != 1:
        raise CamError(
            f"the sub-model {sub.name!r} is called {len(nodes)} times inside {parent.name!r}; "
            "Grad-CAM can cut a model only through a sub-model called once"
        )
    return nodes[0]


def _cut(inputs: Any, outputs: Any, where: str) -> Callable[[Any], Any] | None:
    """A model from ``inputs`` to ``outputs`` (tensors of one graph); None when they are the same."""

    if inputs is outputs:
        return None
    try:
        return keras.Model(inputs, outputs)
    except ValueError as err:  # e.g. a skip connection crosses the cut
        raise CamError(
            f"cannot cut the model at {where}: {err}. Choose a layer whose output alone feeds "
            "the rest of the network (the end of a block, or leave layer=None for the last map)"
        ) from err


def _logits(model: Any) -> tuple[Any, Callable[[Any], Any] | None]:
    """Where the class scores start, and how to finish them, for the model's output layer.

    A softmax output is undone: a ``Softmax``/``Activation`` layer is skipped, and a
    layer with ``activation="softmax"`` (the bloodlib head) is replaced by a linear copy
    given the same weights at every call. Any other output is taken as the scores.
    """

    last = model.outputs[0]._keras_history.operation
    act = getattr(last, "activation", None)
    softmax = getattr(act, "__name__", "") == "softmax"
    if _is_model(last) or not (softmax or isinstance(last, keras.layers.Softmax)):
        return model.outputs[0], None
    if isinstance(last, (keras.layers.Softmax, keras.layers.Activation)):
        return last.input, None
    config = last.get_config()
    config["activation"] = "linear"
    linear = last.__class__.from_config(config)
    linear.build(last.input.shape)

    def scores(x: Any) -> Any:
        # Copied at every call: the split is cached, and the model may have trained since.
        linear.set_weights(last.get_weights())
        return linear(x)

    return last.input, scores


def _chain(parts: Sequence[Callable[[Any], Any] | None]) -> Callable[[Any], Any]:
    steps = [p for p in parts if p is not None]

    def run(x: Any) -> Any:
        for step in steps:
            x = step(x, training=False) if hasattr(step, "layers") else step(x)
        return x

    return run


def _split(model: Any, layer: str | None) -> _Split:
    cached = _SPLITS.get(model, {})
    if layer in cached:
        return cached[layer]
    path = _find_path(model, layer)
    if path is None:
        what = f"no layer named {layer!r}" if layer else "no 4-D feature map (no conv layer)"
        raise CamError(f"{model.name} has {what}; pass layer=<name of a convolutional layer>")
    target, inner = path[-1], path[-2]
    where = f"layer {target.name!r}"
    stop, tail = _logits(model)
    # Innermost level: the model that holds the target layer, cut at its output (a nested
    # model's own ``output`` is a tensor of its inner graph: take its call in ``inner``).
    fmap = _node_in(target, inner).output_tensors[0] if _is_model(target) else target.output
    feature_parts = [_cut(inner.inputs[0], fmap, where)]
    head_parts = [_cut(fmap, stop if inner is model else inner.outputs[0], where)]
    # Outer levels: cut each parent around its call of the nested model.
    for parent, sub in zip(path[-3::-1], path[-2:0:-1], strict=True):
        node = _node_in(sub, parent)
        feature_parts.insert(0, _cut(parent.inputs[0], node.input_tensors[0], where))
        end = stop if parent is model else parent.outputs[0]
        head_parts.append(_cut(node.output_tensors[0], end, where))
    head_parts.append(tail)
    split = _Split(target.name, _chain(feature_parts), _chain(head_parts))
    _SPLITS.setdefault(model, {})[layer] = split
    return split


def _crop_box(model: Any, h: int, w: int) -> tuple[int, int, int, int]:
    """``(top, left, height, width)`` of the frame the feature map covers.

    The whole ``h`` x ``w`` frame, unless a ``CenterCrop`` layer (``FinetuneConfig.crop``)
    keeps only its centre: then the map covers that centre square and nothing else.
    """

    for layer in leaves(model):
        if isinstance(layer, keras.layers.CenterCrop):
            _, in_h, in_w, _ = layer.input.shape
            ch, cw = round(layer.height * h / in_h), round(layer.width * w / in_w)
            return (h - ch) // 2, (w - cw) // 2, ch, cw  # CenterCrop's own offsets
    return 0, 0, h, w


def _to_frame(cam: Any, box: tuple[int, int, int, int], h: int, w: int) -> Any:
    """Upsample ``(N, h', w', 1)`` maps onto their box; zero outside it. ``(N, h, w)``."""

    top, left, ch, cw = box
    cam = tf.image.resize(cam, (ch, cw), method="bilinear")
    cam = tf.pad(cam, [[0, 0], [top, h - ch - top], [left, w - cw - left], [0, 0]])
    return cam[..., 0]


def _class_indices(class_index: int | Sequence[int] | None, n: int) -> np.ndarray | None:
    if class_index is None:
        return None
    if np.ndim(class_index) == 0:
        return np.full(n, int(class_index), np.int32)
    idx = np.asarray(class_index, np.int32).ravel()
    if len(idx) != n:
        raise CamError(f"class_index has {len(idx)} entries for {n} images; give one per image")
    return idx


def grad_cam(
    model: Any,
    images: Any,
    class_index: int | Sequence[int] | None = None,
    *,
    layer: str | None = None,
) -> np.ndarray:
    """Grad-CAM maps (Selvaraju et al. 2017) of ``images`` for one class each.

    ``model``: a Keras classifier as loaded by ``keras.models.load_model(path,
    compile=False)`` (a ``bloodlib.predict.engine.Classifier`` also works), nested backbones
    included. ``images``: ``(N, H, W, 3)`` RGB in 0..255, what the model takes (see
    ``bloodlib.data.pipeline.load_images``). ``class_index``: None for each image's
    predicted class, one int for all, or one int per image. ``layer``: the name of
    the feature map, searched inside nested sub-models too; None takes the last 4-D
    output (the backbone's last convolutional activation).

    Returns ``(N, H, W)`` float32 maps in [0, 1] (bilinearly upsampled from the
    feature map; all zeros where no location speaks for the class, and outside the centre
    square a model that crops (``FinetuneConfig.crop``) never sees).
    """

    model = keras_model(model)
    x = np.asarray(images)
    if x.ndim != 4 or x.shape[-1] != 3:
        raise CamError(
            f"images must be a batch (N, H, W, 3) of RGB pixels, got shape {x.shape}; "
            "for one image use images[None]"
        )
    n, h, w = x.shape[:3]
    idx = _class_indices(class_index, n)
    split = _split(model, layer)
    box = _crop_box(model, h, w)  # the model's, not the batch's: found once
    maps = []
    for start in range(0, n, BATCH_SIZE):
        batch = tf.convert_to_tensor(x[start : start + BATCH_SIZE], tf.float32)
        fmap = split.features(batch)
        with tf.GradientTape() as tape:
            tape.watch(fmap)
            scores = tf.cast(split.head(fmap), tf.float32)
            k = int(scores.shape[-1])
            if idx is None:
                chosen = tf.argmax(scores, axis=-1, output_type=tf.int32)
            else:
                chosen = tf.constant(idx[start : start + BATCH_SIZE])
                bad = [int(c) for c in idx if not 0 <= c < k]
                if bad:
                    raise CamError(f"class_index {bad[0]} out of range: the model has {k} classes")
            score = tf.gather(scores, chosen, axis=1, batch_dims=1)
        grads = tf.cast(tape.gradient(score, fmap), tf.float32)
        fmap = tf.cast(fmap, tf.float32)
        weights = tf.reduce_mean(grads, axis=(1, 2), keepdims=True)  # alpha_k per image
        cam = tf.nn.relu(tf.reduce_sum(weights * fmap, axis=-1, keepdims=True))
        cam = _to_frame(cam, box, h, w)
        top = tf.reduce_max(cam, axis=(1, 2), keepdims=True)
        maps.append(tf.math.divide_no_nan(cam, top).numpy())
    return np.clip(np.concatenate(maps), 0.0, 1.0).astype(np.float32)


def _pick(rows: pd.Index, n: int, rng: np.random.Generator) -> list[int]:
    if len(rows) <= n:
        return list(rows)
    return sorted(rng.choice(np.asarray(rows), size=n, replace=False).tolist())


def cam_examples(
    model: Any,
    frame: pd.DataFrame,
    proba: Any,
    classes: Sequence[str],
    image_size: int,
    per_class: int = 2,
    seed: int = DEFAULT_SEED,
    *,
    layer: str | None = None,
) -> pd.DataFrame:
    """Grad-CAM maps of up to ``per_class`` right and ``per_class`` wrong cells of every class.

    ``frame``: the test cells (``path``, ``label``); ``proba``: their ``(N, K)`` class
    probabilities in ``classes`` order. A wrong cell of class c is one whose true
    class is c. Cells are drawn at random (``seed``) and mapped for the class that
    ``proba`` predicted: what the network saw when it decided. Returns one row per
    cell: ``path, label, predicted, probability, correct, cam`` (``cam`` an
    (image_size, image_size) array) and ``image`` (the uint8 pixels the map is of).
    ``layer``: the feature map Grad-CAM reads (:func:`grad_cam`; None: the last).
    """

    proba = np.asarray(proba)
    if len(proba) != len(frame) or proba.ndim != 2 or proba.shape[1] != len(classes):
        raise CamError(
            f"proba has shape {proba.shape} for {len(frame)} cells and {len(classes)} classes; "
            "pass the probabilities of exactly these cells, one column per class"
        )
    table = frame.reset_index(drop=True)
    pred_idx = proba.argmax(axis=1)
    predicted = pd.Series(np.asarray(classes, dtype=object)[pred_idx])
    correct = table["label"].astype(str) == predicted
    rng = np.random.default_rng(seed)
    chosen: list[int] = []
    for cls in classes:
        mine = table["label"].astype(str) == cls
        for ok in (True, False):
            chosen += _pick(table.index[mine & (correct == ok)], per_class, rng)
    columns = ["path", "label", "predicted", "probability", "correct", "cam", "image"]
    if not chosen:
        return pd.DataFrame(columns=columns)
    paths = table.loc[chosen, "path"].astype(str).tolist()
    images = load_images(paths, image_size)
    cams = grad_cam(model, images, class_index=pred_idx[chosen], layer=layer)
    return pd.DataFrame(
        {
            "path": paths,
            "label": table.loc[chosen, "label"].astype(str).tolist(),
            "predicted": predicted[chosen].tolist(),
            "probability": proba[chosen, pred_idx[chosen]].astype(float),
            "correct": correct[chosen].to_numpy(bool),
            "cam": list(cams),
            "image": list(np.clip(images, 0, 255).round().astype(np.uint8)),
        },
        columns=columns,
    )
