"""Colour normalisation of another lab's cells towards PBC's stain.

Transforms of decoded images (RGB float 0..255, any size), applied before the model's
own preprocessing (``classify --normalize {reinhard,macenko}``):

- :func:`reinhard`: Reinhard et al. (2001), "Color transfer between images": shift and
  scale each channel of the image in CIELAB so its mean and standard deviation match a
  reference. The reference is PBC's (:data:`PBC_REFERENCE`), measured on PBC cells.
  Each image is moved by its own statistics, so a red eosinophil filling its frame is
  moved further than a pale neutrophil: the colour that tells them apart shrinks.
- :func:`macenko`: Macenko et al. (2009), "A method for normalizing histology slides for
  quantitative analysis": unmix each pixel's optical density into two stains (the
  nuclear blue-purple and the pink eosin) and re-colour the amounts with PBC's stains
  (:data:`PBC_STAINS`). The lab's stains are estimated once, from many of its cells
  (:func:`macenko_stains`), so every cell of the lab is moved alike.

Scale (``--rescale-cell``), a folder's look and the synthetic other lab live in
:mod:`bloodlib.data.look`.

Pure NumPy / scikit-image: no model code, so notebooks and tests can call it directly.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from skimage.color import lab2rgb, rgb2lab

#: Names accepted by ``--normalize`` (``none`` leaves colours alone). A name joined by ``+``
#: predicts once per normalisation and multiplies the answers (:func:`normalize_views`).
NORMALIZE_METHODS = ("none", "reinhard", "macenko", "reinhard+macenko")


@dataclass(frozen=True)
class StainReference:
    """What a lab's cells look like: CIELAB mean and standard deviation, nucleus size.

    ``nucleus_fraction`` is the median diameter of the stained nucleus (the equivalent
    circle of :func:`bloodlib.data.look.nucleus_mask`) as a fraction of the frame's side.
    """

    lab_mean: tuple[float, float, float]
    lab_std: tuple[float, float, float]
    nucleus_fraction: float
    source: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> StainReference:
        """From a sidecar's ``stain_reference`` field (what :meth:`to_dict` wrote)."""
        try:
            mean = tuple(float(v) for v in d["lab_mean"])
            std = tuple(float(v) for v in d["lab_std"])
            frac = float(d["nucleus_fraction"])
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(
                f"a stain reference needs lab_mean, lab_std (3 numbers each) and "
                f"nucleus_fraction; got {d!r}"
            ) from exc
        if len(mean) != 3 or len(std) != 3 or min(std) <= 0 or not 0 < frac < 1:
            raise ValueError(f"not a valid stain reference: {d!r}")
        return cls(mean, std, frac, str(d.get("source", "")))  # type: ignore[arg-type]


#: PBC's look, measured with :func:`bloodlib.data.look.measure_reference` on 320 images of
#: ``PBC_dataset_normal_DIB`` (40 per class, seed 0, at 224 px). A constant, so that
#: classify needs no PBC images; a study may store its own in the sidecar.
PBC_REFERENCE = StainReference(
    lab_mean=(79.706, 10.679, 7.333),
    lab_std=(15.407, 8.799, 13.884),
    nucleus_fraction=0.2787,
    source="PBC_dataset_normal_DIB, 320 images (40 per class, seed 0), 224 px",
)


# --- colour ------------------------------------------------------------------------------


def _as_float01(image: np.ndarray) -> np.ndarray:
    x = np.asarray(image, dtype=np.float64)
    if x.ndim != 3 or x.shape[-1] != 3:
        raise ValueError(f"expected an RGB image (h, w, 3), got shape {x.shape}")
    return np.clip(x / 255.0, 0.0, 1.0)


def lab_stats(image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and standard deviation of an RGB (0..255) image in CIELAB."""

    lab = rgb2lab(_as_float01(image)).reshape(-1, 3)
    return lab.mean(axis=0), lab.std(axis=0)


def lab_distance(image: np.ndarray, reference: StainReference = PBC_REFERENCE) -> float:
    """How far an image's CIELAB statistics are from a reference (Euclidean, means and stds)."""
    mean, std = lab_stats(image)
    return float(
        np.sqrt(np.sum((mean - reference.lab_mean) ** 2) + np.sum((std - reference.lab_std) ** 2))
    )


def reinhard(image: np.ndarray, reference: StainReference = PBC_REFERENCE) -> np.ndarray:
    """The image with its CIELAB mean and std per channel moved to the reference's.

    Returns float32 RGB in 0..255 (colours outside the RGB gamut are clipped).
    """

    lab = rgb2lab(_as_float01(image))
    mean = lab.reshape(-1, 3).mean(axis=0)
    # A flat channel (a blank frame) has no spread to scale: keep it flat at the new mean.
    std = np.maximum(lab.reshape(-1, 3).std(axis=0), 1e-6)
    out = (lab - mean) / std * np.asarray(reference.lab_std) + np.asarray(reference.lab_mean)
    rgb = lab2rgb(out)
    return (np.clip(rgb, 0.0, 1.0) * 255.0).astype(np.float32)


# --- stains (Macenko) --------------------------------------------------------------------

#: Pixels whose optical density is below this in any channel are background or nearly
#: clear: they carry no stain to estimate (Macenko et al.'s beta).
MACENKO_BETA = 0.15
#: Percentile of the angles in the stain plane taken as each stain's direction: robust
#: extremes rather than the single most extreme pixel (Macenko et al.'s alpha).
MACENKO_ALPHA = 1.0
#: Percentile of a stain's amount taken as its maximum, to scale a lab's amounts to PBC's.
MACENKO_MAX_PERCENTILE = 99.0
#: Stained pixels sampled to estimate a lab's stains: the directions are stable to about
#: 0.01 with this many, and the eigen-decomposition stays a few milliseconds.
MACENKO_PIXELS = 200_000
#: Fewer stained pixels than this and the plane's directions are noise (a few small
#: cells are enough: one 224 px PBC cell has about 10,000).
MACENKO_MIN_PIXELS = 500


@dataclass(frozen=True)
class StainVectors:
    """A lab's two stains in optical density, their typical maximum amounts, its background.

    ``stains``: unit optical-density vectors (R, G, B), the nuclear stain first (the one
    absorbing more red), then eosin. ``background``: RGB of the empty slide (the median of
    the frames' borders), the light the optical density is measured against.
    """

    background: tuple[float, float, float]
    stains: tuple[tuple[float, float, float], tuple[float, float, float]]
    max_amount: tuple[float, float]
    source: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


#: PBC's stains, measured with :func:`macenko_stains` on 320 images of
#: ``PBC_dataset_normal_DIB`` (40 per class: ``groupby(label).sample(40, random_state=0)``
#: at 224 px). A constant, so that classify needs no PBC images.
PBC_STAINS = StainVectors(
    background=(246.0, 222.0, 195.0),
    stains=((0.6988, 0.6939, 0.1738), (0.4128, 0.908, 0.0717)),
    max_amount=(1.3843, 2.275),
    source="PBC_dataset_normal_DIB, 320 images (40 per class, seed 0), 224 px",
)


def background_colour(images: Sequence[np.ndarray]) -> np.ndarray:
    """The slide's RGB without cells: the median of the frames' border pixels.

    Blood-cell datasets centre the cell, so the border is mostly slide (and red cells);
    the same estimate pads :func:`bloodlib.data.look.zoom`'s shrunken frames.
    """
    border = [
        np.concatenate([x[0], x[-1], x[:, 0], x[:, -1]])
        for x in (np.asarray(im, np.float32) for im in images)
    ]
    return np.median(np.concatenate(border), axis=0)


def optical_density(image: np.ndarray, background: Sequence[float]) -> np.ndarray:
    """Beer-Lambert: -log of the light let through, per channel, against the background."""
    x = np.asarray(image, np.float64)
    return np.maximum(-np.log((x + 1.0) / (np.asarray(background, np.float64) + 1.0)), 0.0)


def macenko_stains(images: Sequence[np.ndarray], source: str = "") -> StainVectors:
    """A lab's :class:`StainVectors` from many of its cells at once (RGB 0..255 arrays).

    Macenko et al. (2009): the stained pixels' optical densities span a plane (its two
    main eigenvectors); the stains are the directions at the ``MACENKO_ALPHA`` and
    ``100 - MACENKO_ALPHA`` percentiles of the pixels' angles in that plane. Pooled over
    the lab rather than per image, so a cell's own colour, which is what tells an
    eosinophil from a neutrophil, is not normalised away.
    """
    if not len(images):
        raise ValueError("macenko_stains needs at least one image")
    bg = background_colour(images)
    od = np.concatenate([optical_density(im, bg).reshape(-1, 3) for im in images])
    od = od[(od > MACENKO_BETA).all(axis=1)]
    if len(od) < MACENKO_MIN_PIXELS:
        raise ValueError(
            f"only {len(od)} stained pixels in {len(images)} image(s): too few to estimate "
            "the stains (are these stained blood cells?); use --normalize reinhard"
        )
    if len(od) > MACENKO_PIXELS:  # seeded: the same folder gives the same stains
        od = od[np.random.default_rng(0).choice(len(od), MACENKO_PIXELS, replace=False)]
    _, vecs = np.linalg.eigh(np.cov(od.T))
    plane = vecs[:, [1, 2]]  # the two largest eigenvalues
    plane *= np.where(plane[0] < 0, -1.0, 1.0)  # point both into positive red density
    proj = od @ plane
    angle = np.arctan2(proj[:, 1], proj[:, 0])
    lo, hi = np.percentile(angle, [MACENKO_ALPHA, 100.0 - MACENKO_ALPHA])
    a = plane @ np.array([np.cos(lo), np.sin(lo)])
    b = plane @ np.array([np.cos(hi), np.sin(hi)])
    nuclear, eosin = (a, b) if a[0] > b[0] else (b, a)
    matrix = np.stack([nuclear, eosin], axis=1)
    matrix /= np.linalg.norm(matrix, axis=0)
    amount = np.linalg.pinv(matrix) @ od.T
    top = np.percentile(amount, MACENKO_MAX_PERCENTILE, axis=1)
    return StainVectors(
        tuple(round(float(v), 2) for v in bg),  # type: ignore[arg-type]
        tuple(tuple(round(float(v), 4) for v in col) for col in matrix.T),  # type: ignore[arg-type]
        tuple(round(float(v), 4) for v in top),  # type: ignore[arg-type]
        source,
    )


def macenko(
    image: np.ndarray, lab: StainVectors, reference: StainVectors = PBC_STAINS
) -> np.ndarray:
    """The image re-coloured with the reference's stains: float32 RGB 0..255.

    Each pixel's optical density is unmixed with the lab's stain matrix, the amounts are
    scaled by the reference's typical maximum over the lab's, and re-mixed with the
    reference's stains against the reference's background.
    """
    x = np.asarray(image, np.float32)
    if x.ndim != 3 or x.shape[-1] != 3:
        raise ValueError(f"expected an RGB image (h, w, 3), got shape {x.shape}")
    src = np.asarray(lab.stains, np.float64).T
    dst = np.asarray(reference.stains, np.float64).T
    scale = np.asarray(reference.max_amount) / np.maximum(np.asarray(lab.max_amount), 1e-6)
    amount = (np.linalg.pinv(src) @ optical_density(x, lab.background).reshape(-1, 3).T) * scale[
        :, None
    ]
    bg = np.asarray(reference.background, np.float64) + 1.0
    rgb = bg * np.exp(-(dst @ amount).T) - 1.0
    return np.clip(rgb, 0.0, 255.0).reshape(x.shape).astype(np.float32)


# --- scale -------------------------------------------------------------------------------


# --- does a folder look like PBC? -------------------------------------------------------


# --- for classify and notebooks ----------------------------------------------------------


def check_normalize(normalize: str | None) -> str:
    """The normalisation's canonical name, or a ValueError listing the known ones."""
    name = (normalize or "none").lower()
    if name not in NORMALIZE_METHODS:
        raise ValueError(
            f"unknown colour normalisation {normalize!r}; use one of {', '.join(NORMALIZE_METHODS)}"
        )
    return name


def normalize_views(normalize: str | None) -> tuple[str, ...]:
    """The single normalisations behind a ``--normalize`` name, each predicted on its own.

    ``reinhard+macenko`` is two views of every cell whose class probabilities are combined
    by their normalised geometric mean (``evaluate.log_average``): a class must be likely
    after both moves. The two fail differently on another lab
    (docs/other-labs.md): Reinhard moves each image by its own colours, so a pale
    neutrophil can look eosinophilic; Macenko moves the lab's two dyes alike, and maps a
    red-brown eosinophil to PBC's purple. Each view's mistakes are rarely the other's.
    """
    return tuple(check_normalize(normalize).split("+"))


def make_colour(
    normalize: str | None = None,
    reference: StainReference = PBC_REFERENCE,
    stains: StainVectors | None = None,
) -> Callable[[np.ndarray], np.ndarray] | None:
    """One image -> image colour normalisation (None for ``none``).

    ``macenko`` needs the lab's ``stains`` (:func:`macenko_stains` on many of its cells).
    """
    name = check_normalize(normalize)
    if len(normalize_views(name)) > 1:
        raise ValueError(
            f"{name!r} is several views of each cell, not one colour move: make one transform "
            "per name of stain.normalize_views(...) and combine the predictions"
        )
    if name == "reinhard":
        return lambda im: reinhard(im, reference)
    if name == "macenko":
        if stains is None:
            raise ValueError(
                "--normalize macenko needs the lab's stains: stain.macenko_stains(cells) "
                "on many of the lab's cells"
            )
        return lambda im: macenko(im, stains)
    return None


# --- a synthetic other lab ---------------------------------------------------------------
