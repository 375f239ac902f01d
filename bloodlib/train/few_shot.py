"""How a network learns from a few labelled cells of a new lab: which layers learn
(``head``, ``top``, ``block``, ``bn``), Dropout held off, augmented batches decoded once,
and the entropy of the predictions on the lab's unlabelled cells as a second loss.

The pieces :func:`bloodlib.train.adapt.adapt` puts in sequence; each is tested on its own.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Sequence
from typing import Any

import keras
import numpy as np
import pandas as pd
import tensorflow as tf

from bloodlib.core.errors import BloodlibError
from bloodlib.core.progress import tqdm
from bloodlib.data.pipeline import make_dataset
from bloodlib.evaluate import reject
from bloodlib.models import backbones
from bloodlib.models.backbones import leaves
from bloodlib.predict import inference

#: Unlabelled cells beside each batch of labelled ones (the step costs about twice as much).
UNLABELLED_BATCH = 16


def effective_batch(batch_size: int, n_cells: int) -> int:
    """A batch is never larger than the support: 1 shot x 5 classes trains in batches of 5."""
    return max(1, min(batch_size, n_cells))


def augmented(
    paths: list[str],
    labels: np.ndarray | None,
    size: int,
    batch: int,
    seed: int,
    repeat: bool = False,
) -> Any:
    """Shuffled, augmented batches (the study's augmentation), decoded once and kept in memory."""
    return make_dataset(
        paths,
        labels,
        image_size=size,
        batch_size=batch,
        shuffle=True,
        augment=True,
        seed=seed,
        cache=True,
        repeat=repeat,
    )


def entropy_among(p: Any, present: Sequence[int]) -> Any:
    """Entropy (nats) of each row of probabilities ``p``, renormalised over the class indices
    ``present``: 0 for a certain answer, ln(len(present)) when every class is equally likely.

    The unlabelled term of :func:`adapt` (its mean over a batch); takes tensors or arrays.
    """

    p = tf.gather(tf.cast(p, tf.float32), list(present), axis=1)
    p = p / tf.reduce_sum(p, axis=1, keepdims=True)
    return -tf.reduce_sum(p * tf.math.log(p + 1e-8), axis=1)


def fit_with_entropy(
    model: Any,
    support: Any,
    unlabelled: Any,
    epochs: int,
    learning_rate: float,
    label_smoothing: float,
    present: list[int],
    weight: float,
    progress: bool = False,
) -> None:
    """Adam on the support's cross-entropy plus ``weight`` x the mean entropy of the
    predictions on a batch of unlabelled cells, renormalised over the classes ``present``
    (a class the lab does not have should not soak up probability to lower the entropy)."""

    optimizer = keras.optimizers.Adam(learning_rate)
    cross_entropy = keras.losses.CategoricalCrossentropy(label_smoothing=label_smoothing)
    variables = model.trainable_variables
    stream = iter(unlabelled)

    @tf.function
    def step(x: tf.Tensor, y: tf.Tensor, u: tf.Tensor) -> None:
        with tf.GradientTape() as tape:
            loss = cross_entropy(y, model(x, training=True))
            loss += weight * tf.reduce_mean(entropy_among(model(u, training=True), present))
        optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables, strict=True))

    with tqdm(total=epochs, desc="adapt", unit="epoch", disable=not progress) as bar:
        for _ in range(epochs):
            for x, y in support:
                step(x, y, next(stream))
            bar.update(1)


def set_learning(model: Any, train: str, backbone: str | None = None) -> int:
    """Only the head (the last Dense layer) learns; in ``top`` mode also the backbone's last
    convolution, in ``block`` mode also every layer of the backbone's last block and after it
    (``backbone`` names it, for its block pattern), in ``bn`` mode also every BatchNorm layer.
    BatchNorm keeps PBC's statistics in ``top`` and ``block``."""

    model.trainable = True  # parents must be trainable for a leaf's weights to count
    every = leaves(model)
    dense = [layer for layer in every if isinstance(layer, keras.layers.Dense)]
    if not dense:
        raise AdaptError("the model has no Dense head to adapt: is it a bloodlib network?")
    head = next((d for d in dense if d.name == "head"), dense[-1])
    learning: set[int] = {id(head)}
    if train == "top":
        convs = [
            layer
            for layer in every
            if isinstance(layer, keras.layers.Conv2D)
            and not isinstance(layer, keras.layers.DepthwiseConv2D)
        ]
        if not convs:
            raise AdaptError("the model has no convolution to adapt: use --train head")
        learning.add(id(convs[-1]))
    elif train == "block":
        learning |= {id(layer) for layer in last_block_on(every, backbone)}
    for layer in every:
        layer.trainable = id(layer) in learning or (
            train == "bn" and isinstance(layer, keras.layers.BatchNormalization)
        )
    return len(model.trainable_weights)


def last_block_on(every: list[Any], backbone: str | None) -> list[Any]:
    """The layers with weights from the backbone's last block to the end, BatchNorm excepted."""

    bb = backbones.REGISTRY.get(backbone or "")
    names = [layer.name for layer in every]
    known = [i for i in map(bb.block_index, names) if i is not None] if bb else []
    if not known:
        raise AdaptError(
            f"no blocks known for backbone {backbone!r}: use --train top or --train head"
        )
    start = bb.block_start(names, max(known))
    return [
        layer
        for layer in every[start:]
        if layer.weights and not isinstance(layer, keras.layers.BatchNormalization)
    ]


@contextlib.contextmanager
def dropout_off(model: Any) -> Iterator[None]:
    """Within the block every Dropout layer's rate is 0; the rates come back on leaving it.

    On 21 support cells the units Dropout happens to drop decided more than the cells did:
    tecom, 5 shots, ``top``, draws 42-47, the same six supports: with Dropout 90.0 / 71.3 /
    89.2 / 88.9 / 79.9 / 88.2 % (mean 84.6, sd 7.4); without 88.5 / 83.5 / 87.1 / 90.3 / 86.7 /
    83.9 % (mean 86.7, sd 2.6). The flips and rotations of the augmentation regularise enough.
    The saved model keeps the base's rates, so it has the base's architecture.
    """

    rates = [
        (layer, layer.rate) for layer in leaves(model) if isinstance(layer, keras.layers.Dropout)
    ]
    for layer, _ in rates:
        layer.rate = 0.0
    try:
        yield
    finally:
        for layer, rate in rates:
            layer.rate = rate


class _NoRetraceWarning(logging.Filter):
    """Drop TensorFlow's "triggered tf.function retracing" warning.

    Each adapted model is a new model, so its forward pass is traced anew by design; after a
    few models in one process (notebook 05's adapt curve) TensorFlow warns about it.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        return "triggered tf.function retracing" not in record.getMessage()


def predict(model: Any, paths: list[str], image_size: int, batch_size: int) -> np.ndarray:

    logger = tf.get_logger()
    if not any(isinstance(f, _NoRetraceWarning) for f in logger.filters):
        logger.addFilter(_NoRetraceWarning())

    ds = make_dataset(paths, image_size=image_size, batch_size=batch_size)
    return inference.predict_batches(
        inference.keras_forward(model), ds.as_numpy_iterator(), progress=False
    )


def held_out_scores(
    proba: np.ndarray, labels: pd.Series, classes: list[str], present: list[str]
) -> dict:
    """Accuracy over every class, and among the classes present (plain and balanced)."""
    y_all = labels.map({c: i for i, c in enumerate(classes)}).to_numpy()
    y_present = labels.map({c: i for i, c in enumerate(present)}).to_numpy()
    pred = reject.restrict(proba, classes, present).argmax(axis=1)
    recalls = [np.mean(pred[y_present == i] == i) for i in np.unique(y_present)]
    return {
        "n": int(len(labels)),
        "accuracy": float(np.mean(proba.argmax(axis=1) == y_all)),
        "accuracy_present": float(np.mean(pred == y_present)),
        "balanced_accuracy_present": float(np.mean(recalls)),
    }


class AdaptError(BloodlibError):
    """A labelled folder or a request that adapting cannot work with."""
