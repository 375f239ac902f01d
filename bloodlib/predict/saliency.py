"""Is a saliency map evidence? Two checks a map must pass before a student reads it.

A Grad-CAM map can look plausible and say nothing about the network: Adebayo et al.
("Sanity checks for saliency maps", NeurIPS 2018) showed maps that barely change when the
network's weights are replaced by random ones. So before notebook 04 shows maps:

- :func:`randomisation_check`: the maps of the trained network against those of the same
  network with its top layers' weights randomised (cascading from the head down, as
  Adebayo et al. do). Rank correlation near 1 means the map shows the input or the
  architecture, not what the network learnt; a map worth reading correlates little.
- :func:`deletion_test`: remove the pixels a map ranks most salient first, and watch the
  class probability; if the map points at the evidence, it falls faster than when the same
  number of pixels is removed in a random order (the "deletion" metric of Petsiuk et al.,
  RISE, BMVC 2018). Removed pixels take the slide's colour (the frame's border median), so
  a removed nucleus looks like background, not like a black hole.

:func:`finer_layer` picks the map Grad-CAM uses in notebook 04: the last one at twice the
resolution of the network's final map (10x10 at 160 px for EfficientNet-Lite0, against the
5x5 of its last convolution, whose upsampled squares draw a ring around every cell).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np
from scipy.stats import rankdata, wilcoxon

from bloodlib.core.config import DEFAULT_SEED
from bloodlib.data.stain import background_colour
from bloodlib.models.backbones import leaves
from bloodlib.predict.cam import CamError, grad_cam, keras_model

#: Fractions of the pixels removed, in order, by :func:`deletion_test`.
DELETION_STEPS = tuple(np.linspace(0.0, 1.0, 11))
#: Weighted layers randomised by :func:`randomisation_check`, counted from the head down: the
#: head and the network's top block, the layers whose weights the fine-tuning moved most.
RANDOMISED_LAYERS = 6
#: A map passes the randomisation check when its mean rank correlation with the randomised
#: network's map is below this: Adebayo et al.'s failing methods (guided backprop, guided
#: Grad-CAM) stay near 1 as layers are randomised; Grad-CAM itself falls near 0.
MAX_RANK_CORRELATION = 0.5
#: The deletion test passes when removing the salient pixels first lowers the area under the
#: probability curve more than random removal, one-sided paired Wilcoxon at this level.
DELETION_ALPHA = 0.05


def _maps_4d(model: Any) -> list[tuple[str, int]]:
    """``(name, side)`` of every layer with a 4-D output, in graph order (nested models too)."""
    found = []
    for layer in leaves(model):
        try:
            shape = layer.output.shape
        except (AttributeError, ValueError):
            continue
        if len(shape) == 4 and shape[1] is not None:
            found.append((layer.name, int(shape[1])))
    return found


def finer_layer(model: Any) -> str:
    """The last feature map at twice (or more) the side of the network's final one."""
    maps = _maps_4d(keras_model(model))
    if not maps:
        raise CamError("the model has no 4-D feature map")
    final = maps[-1][1]
    finer = [name for name, side in maps if side >= 2 * final]
    return finer[-1] if finer else maps[-1][0]


def _weighted(model: Any) -> list[Any]:
    """Layers with a kernel (convolutions, dense), in graph order."""
    return [layer for layer in leaves(model) if any("kernel" in w.path for w in layer.weights)]


@contextmanager
def randomised(
    model: Any, n_layers: int = RANDOMISED_LAYERS, seed: int = DEFAULT_SEED
) -> Iterator[list[str]]:
    """Within the block the top ``n_layers`` weighted layers hold random weights (each
    kernel and bias drawn from a normal of the same spread as the trained one); the
    trained weights come back on leaving it. Yields the names of the layers randomised."""
    model = keras_model(model)
    layers = _weighted(model)[::-1][:n_layers]
    saved = [[np.array(w) for w in layer.get_weights()] for layer in layers]
    rng = np.random.default_rng(seed)
    try:
        for layer, weights in zip(layers, saved, strict=True):
            layer.set_weights(
                [rng.normal(0.0, float(w.std()) or 0.05, w.shape).astype(w.dtype) for w in weights]
            )
        yield [layer.name for layer in layers]
    finally:
        for layer, weights in zip(layers, saved, strict=True):
            layer.set_weights(weights)


def rank_correlation(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Spearman's rank correlation between each pair of maps (``(N, H, W)`` each); tied
    values (a map's zeros) share their average rank, as Spearman's definition has it."""
    ra = rankdata(np.asarray(a).reshape(len(a), -1), axis=1)
    rb = rankdata(np.asarray(b).reshape(len(b), -1), axis=1)
    ra -= ra.mean(axis=1, keepdims=True)
    rb -= rb.mean(axis=1, keepdims=True)
    denom = np.sqrt((ra**2).sum(axis=1) * (rb**2).sum(axis=1))
    return np.divide((ra * rb).sum(axis=1), denom, out=np.zeros(len(ra)), where=denom > 0)


def randomisation_check(
    model: Any,
    images: np.ndarray,
    class_index: Sequence[int] | None = None,
    *,
    layer: str | None = None,
    n_layers: int = RANDOMISED_LAYERS,
    seed: int = DEFAULT_SEED,
) -> dict[str, Any]:
    """The maps of the trained network against those of its randomised copy.

    The class of each map is the trained network's prediction (or ``class_index``), for
    both networks, so only the weights differ. Returns the per-image rank correlations,
    their mean, both sets of maps and the layers randomised.
    """
    model = keras_model(model)
    if class_index is None:
        class_index = np.asarray(model(np.asarray(images, np.float32), training=False)).argmax(
            axis=1
        )
    trained = grad_cam(model, images, class_index, layer=layer)
    with randomised(model, n_layers, seed) as names:
        random = grad_cam(model, images, class_index, layer=layer)
    rho = rank_correlation(trained, random)
    return {
        "rank_correlation": rho,
        "mean_rank_correlation": float(rho.mean()),
        "trained": trained,
        "randomised": random,
        "layers": names,
    }


def _remove(image: np.ndarray, order: np.ndarray, fraction: float, fill: np.ndarray) -> np.ndarray:
    out = image.copy().reshape(-1, 3)
    k = int(round(fraction * len(order)))
    out[order[:k]] = fill
    return out.reshape(image.shape)


def deletion_test(
    model: Any,
    images: np.ndarray,
    maps: np.ndarray,
    class_index: Sequence[int] | None = None,
    *,
    steps: Sequence[float] = DELETION_STEPS,
    seed: int = DEFAULT_SEED,
) -> dict[str, Any]:
    """The class probability as pixels are removed, most salient first and in random order.

    ``maps``: one saliency map per image, at the images' size. Returns the fractions, both
    curves per image (``(N, len(steps))``), and the area under each (the mean probability
    over the fractions; lower is a faster fall), the share of images where the salient order
    fell faster, and the one-sided paired Wilcoxon p-value of that difference.
    """
    model = keras_model(model)
    x = np.asarray(images, np.float32)
    if np.asarray(maps).shape != x.shape[:3]:
        raise CamError(f"maps {np.asarray(maps).shape} do not match the images {x.shape[:3]}")
    proba = np.asarray(model(x, training=False))
    idx = proba.argmax(axis=1) if class_index is None else np.asarray(class_index)
    rng = np.random.default_rng(seed)
    salient_rows, random_rows = [], []
    for image, saliency, c in zip(x, np.asarray(maps), idx, strict=True):
        fill = background_colour([image])
        orders = {
            "salient": np.argsort(-saliency.ravel(), kind="stable"),
            "random": rng.permutation(saliency.size),
        }
        batch = np.stack([_remove(image, orders[o], f, fill) for o in orders for f in steps])
        p = np.asarray(model(batch, training=False))[:, c].reshape(2, len(steps))
        salient_rows.append(p[0])
        random_rows.append(p[1])
    salient, random = np.array(salient_rows), np.array(random_rows)
    auc_salient, auc_random = salient.mean(axis=1), random.mean(axis=1)
    differ = not np.allclose(auc_salient, auc_random)
    p = float(wilcoxon(auc_salient, auc_random, alternative="less").pvalue) if differ else 1.0
    return {
        "fractions": np.asarray(steps),
        "salient": salient,
        "random": random,
        "auc_salient": auc_salient,
        "auc_random": auc_random,
        "mean_auc_salient": float(auc_salient.mean()),
        "mean_auc_random": float(auc_random.mean()),
        "faster_than_random": float(np.mean(auc_salient < auc_random)),
        "p_value": p,  # one-sided paired Wilcoxon: salient-first falls faster than random
    }


def passes(check: dict[str, Any], deletion: dict[str, Any]) -> dict[str, bool]:
    """Whether the maps pass each check (:data:`MAX_RANK_CORRELATION`, :data:`DELETION_ALPHA`)."""
    return {
        "randomisation": check["mean_rank_correlation"] < MAX_RANK_CORRELATION,
        "deletion": deletion["mean_auc_salient"] < deletion["mean_auc_random"]
        and deletion["p_value"] < DELETION_ALPHA,
    }
