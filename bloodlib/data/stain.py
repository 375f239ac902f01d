"""Colour and scale normalisation of another lab's cells towards PBC's look.

Transforms of decoded images (RGB float 0..255, any size), applied before the model's
own preprocessing (``classify --normalize {reinhard,macenko} --rescale-cell``):

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
- :func:`lab_zoom` and :func:`zoom`: estimate the stained nucleus's size by an Otsu
  threshold on a stain channel (:func:`nucleus_fraction`), and zoom about the centre so
  that a lab's cells fill PBC's typical fraction of the frame (one factor per lab, from
  the median of many cells; :func:`rescale_cell` does it per cell). In PBC the white cell
  fills about a third of the frame; other labs often crop tighter, so their cells look
  up to two or three times larger to the network.

Pure NumPy / scikit-image: no model code, so notebooks and tests can call it directly.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

#: Names accepted by ``--normalize`` (``none`` leaves colours alone). A name joined by ``+``
#: predicts once per normalisation and multiplies the answers (:func:`normalize_views`).
NORMALIZE_METHODS = ("none", "reinhard", "macenko", "reinhard+macenko")

#: Zoom factors outside this range mean the segmentation failed (a blank frame, a smear
#: with no stained nucleus): the image is then left at its scale rather than distorted.
ZOOM_LIMITS = (0.25, 4.0)

#: A nucleus smaller than this fraction of the frame's area is noise, not a nucleus.
MIN_NUCLEUS_AREA = 0.002


@dataclass(frozen=True)
class StainReference:
    """What a lab's cells look like: CIELAB mean and standard deviation, nucleus size.

    ``nucleus_fraction`` is the median diameter of the stained nucleus (the equivalent
    circle of :func:`nucleus_mask`) as a fraction of the frame's side.
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


#: PBC's look, measured with :func:`measure_reference` on 320 images of
#: ``PBC_dataset_normal_DIB`` (40 per class, seed 0, at 224 px). A constant, so that
#: classify needs no PBC images; a study may store its own in the sidecar.
PBC_REFERENCE = StainReference(
    lab_mean=(79.706, 10.679, 7.333),
    lab_std=(15.407, 8.799, 13.884),
    nucleus_fraction=0.2787,
    source="PBC_dataset_normal_DIB, 320 images (40 per class, seed 0), 224 px",
)

#: Images sampled from a folder to estimate its lab's zoom (:func:`lab_zoom`): the median
#: over 64 cells is stable to a few percent, and costs one quick decode pass.
ZOOM_SAMPLE = 64


# --- colour ------------------------------------------------------------------------------


def _as_float01(image: np.ndarray) -> np.ndarray:
    x = np.asarray(image, dtype=np.float64)
    if x.ndim != 3 or x.shape[-1] != 3:
        raise ValueError(f"expected an RGB image (h, w, 3), got shape {x.shape}")
    return np.clip(x / 255.0, 0.0, 1.0)


def lab_stats(image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and standard deviation of an RGB (0..255) image in CIELAB."""
    from skimage.color import rgb2lab

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
    from skimage.color import lab2rgb, rgb2lab

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
    the same estimate pads :func:`zoom`'s shrunken frames.
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


def stain_channel(image: np.ndarray) -> np.ndarray:
    """Blue minus green, 0..255: high on Romanowsky-stained (purple) nuclei and granules.

    Red cells (pink: green barely below blue) and the pale background stay low, under
    every lab's stain we have seen, once colours are near PBC's (normalise first).
    """
    x = np.asarray(image, dtype=np.float32)
    return np.clip(x[..., 2] - x[..., 1], 0.0, 255.0)


def nucleus_mask(image: np.ndarray) -> np.ndarray:
    """The stained nucleus: Otsu's threshold on :func:`stain_channel`, the largest component.

    The component kept is the largest one, weighted towards the frame's centre (datasets
    centre the cell they label). Empty when nothing stained stands out.
    """
    from scipy import ndimage
    from skimage.filters import threshold_otsu

    s = stain_channel(image)
    s = ndimage.uniform_filter(s, size=3)  # JPEG noise would break the nucleus into specks
    if float(s.max() - s.min()) < 10.0:  # nothing stained: Otsu would split noise
        return np.zeros(s.shape, bool)
    mask = s > threshold_otsu(s)
    mask = ndimage.binary_opening(mask, iterations=1)
    mask = ndimage.binary_fill_holes(mask)
    labels, n = ndimage.label(mask)
    if n == 0:
        return mask
    h, w = mask.shape
    idx = np.arange(1, n + 1)
    areas = ndimage.sum(mask, labels, idx)
    cy, cx = np.array(ndimage.center_of_mass(mask, labels, idx)).T
    off = np.hypot((cy - h / 2) / h, (cx - w / 2) / w)  # 0 at the centre, ~0.7 in a corner
    best = idx[np.argmax(areas * (1.0 - off))]
    keep = labels == best
    if keep.sum() < MIN_NUCLEUS_AREA * h * w:
        return np.zeros(s.shape, bool)
    return keep


def nucleus_fraction(image: np.ndarray) -> float | None:
    """Diameter of the nucleus's equivalent circle over the frame's side (None: none found)."""
    mask = nucleus_mask(image)
    area = int(mask.sum())
    if area == 0:
        return None
    side = float(np.sqrt(mask.shape[0] * mask.shape[1]))
    return float(2.0 * np.sqrt(area / np.pi) / side)


def zoom(image: np.ndarray, factor: float) -> np.ndarray:
    """Zoom about the centre, keeping the frame's size: >1 crops in, <1 shrinks and pads.

    Padding takes the median colour of the image's border (the slide's background), so a
    shrunken cell sits on background as PBC's do, not on black.
    """
    from PIL import Image

    x = np.asarray(image, dtype=np.float32)
    h, w = x.shape[:2]
    nh, nw = max(1, round(h * factor)), max(1, round(w * factor))
    im = Image.fromarray(np.clip(x, 0, 255).round().astype(np.uint8))
    small = np.asarray(im.resize((nw, nh), Image.Resampling.LANCZOS), np.float32)
    out = np.empty_like(x)
    out[:] = background_colour([x])
    # Place the zoomed image's centre on the frame's centre, cropping what overflows.
    sy, sx = (nh - h) // 2, (nw - w) // 2
    src = small[max(0, sy) : max(0, sy) + min(h, nh), max(0, sx) : max(0, sx) + min(w, nw)]
    dy, dx = max(0, -sy), max(0, -sx)
    out[dy : dy + src.shape[0], dx : dx + src.shape[1]] = src
    return out


def rescale_cell(
    image: np.ndarray, reference: StainReference = PBC_REFERENCE
) -> tuple[np.ndarray, float]:
    """The image zoomed so its nucleus fills the reference's fraction; and the zoom used.

    The zoom is 1 (image unchanged) when no nucleus is found or the factor falls outside
    :data:`ZOOM_LIMITS`.
    """
    frac = nucleus_fraction(image)
    if frac is None:
        return np.asarray(image, np.float32), 1.0
    factor = reference.nucleus_fraction / frac
    if not ZOOM_LIMITS[0] <= factor <= ZOOM_LIMITS[1]:
        return np.asarray(image, np.float32), 1.0
    return zoom(image, factor), float(factor)


# --- does a folder look like PBC? -------------------------------------------------------

#: 95 % of PBC's own cells lie within this colour distance (:func:`lab_distance`) of
#: :data:`PBC_REFERENCE`: 13.7 over 640 PBC dev cells (``sample(640, random_state=1)``,
#: 224 px; 13.6 at 112 px). The median over any 64 PBC cells stays within 3-7; tecom's
#: is 28, notebook 05's synthetic lab's 24. A folder whose median cell is further than
#: this looks unlike PBC, and PBC's test accuracy says nothing about it.
SHIFT_COLOUR_DISTANCE = 13.7
#: Side in pixels the check decodes at: the statistics move by less than 0.2 from 224 px,
#: at a seventh of the cost (about 3 ms a cell).
LOOK_SIZE = 112


@dataclass(frozen=True)
class FolderLook:
    """How far a folder's cells are from PBC's look: median colour distance, nucleus size."""

    n_cells: int
    colour_distance: float
    #: The median nucleus's share of the frame over PBC's (None: no nucleus found).
    nucleus_ratio: float | None

    @property
    def unlike_pbc(self) -> bool:
        return self.colour_distance > SHIFT_COLOUR_DISTANCE

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "unlike_pbc": self.unlike_pbc}

    def describe(self) -> str:
        size = (
            ""
            if self.nucleus_ratio is None
            else f"; their nuclei fill {self.nucleus_ratio:.2f}x PBC's share of the frame"
        )
        return (
            f"median colour distance from PBC {self.colour_distance:.1f} over {self.n_cells} "
            f"cells, where 95 % of PBC's own cells lie within {SHIFT_COLOUR_DISTANCE}{size}"
        )


def folder_look(images: Sequence[np.ndarray]) -> FolderLook:
    """:class:`FolderLook` of some of a folder's cells (RGB 0..255, best at :data:`LOOK_SIZE`)."""
    if not len(images):
        raise ValueError("folder_look needs at least one image")
    dist = float(np.median([lab_distance(im) for im in images]))
    fracs = [f for f in (nucleus_fraction(im) for im in images) if f is not None]
    ratio = float(np.median(fracs)) / PBC_REFERENCE.nucleus_fraction if fracs else None
    return FolderLook(len(images), round(dist, 2), None if ratio is None else round(ratio, 3))


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
    after both moves. The two fail differently on another lab (README, "Using bloodlib on
    your own microscope"): Reinhard moves each image by its own colours, so a pale
    neutrophil can look eosinophilic; Macenko moves the lab's two dyes alike, and maps a
    red-brown eosinophil to PBC's purple. Each view's mistakes are rarely the other's.
    """
    return tuple(check_normalize(normalize).split("+"))


def lab_zoom(
    images: Sequence[np.ndarray],
    normalize: str | None = None,
    reference: StainReference = PBC_REFERENCE,
    stains: StainVectors | None = None,
) -> float:
    """One zoom for a whole lab: PBC's nucleus fraction over the median of these cells'.

    Magnification belongs to the microscope, not to the cell, and nucleus size differs by
    class (a monocyte's is large, a neutrophil's lobes small): one factor from many cells
    keeps each class's size relative to the others, which a per-cell zoom would erase.
    1.0 when no nucleus is found or the factor is outside :data:`ZOOM_LIMITS`. With
    ``macenko``, ``stains`` are the lab's (estimated from ``images`` when not given).
    """
    name = check_normalize(normalize)
    colour = make_colour(name, reference, stains or _lab_stains(name, images))
    fracs = []
    for im in images:
        f = nucleus_fraction(colour(im) if colour else im)
        if f is not None:
            fracs.append(f)
    if not fracs:
        return 1.0
    factor = reference.nucleus_fraction / float(np.median(fracs))
    return float(factor) if ZOOM_LIMITS[0] <= factor <= ZOOM_LIMITS[1] else 1.0


def _lab_stains(name: str, images: Sequence[np.ndarray]) -> StainVectors | None:
    return macenko_stains(images) if name == "macenko" else None


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


def make_transform(
    normalize: str | None = None,
    zoom_factor: float | None = None,
    reference: StainReference = PBC_REFERENCE,
    stains: StainVectors | None = None,
) -> Callable[[np.ndarray], np.ndarray] | None:
    """A batch ``(n, h, w, 3)`` -> batch function applying the chosen normalisations.

    ``zoom_factor``: one zoom for every image (see :func:`lab_zoom`); None or 1 leaves the
    scale alone. ``stains``: the lab's, for ``macenko``. Colour first, then scale.
    Returns None when nothing is asked for.
    """
    colour = make_colour(normalize, reference, stains)
    rescale = zoom_factor is not None and abs(zoom_factor - 1.0) > 1e-6
    if colour is None and not rescale:
        return None

    def one(image: np.ndarray) -> np.ndarray:
        if colour is not None:
            image = colour(image)
        if rescale:
            image = zoom(image, float(zoom_factor))
        return image

    def batch(x: np.ndarray) -> np.ndarray:
        return np.stack([one(im) for im in np.asarray(x, np.float32)]).astype(np.float32)

    return batch


def measure_reference(images: Sequence[np.ndarray], source: str = "") -> StainReference:
    """A lab's :class:`StainReference` from some of its cells (RGB 0..255 arrays).

    Means and stds are averaged over images (each image is normalised as a whole, so the
    reference is the typical image's statistics); the nucleus fraction is the median over
    images where a nucleus was found.
    """
    if not len(images):
        raise ValueError("measure_reference needs at least one image")
    stats = [lab_stats(im) for im in images]
    fracs = [f for f in (nucleus_fraction(im) for im in images) if f is not None]
    if not fracs:
        raise ValueError("no nucleus found in any image: cannot measure the cells' size")
    mean = np.mean([m for m, _ in stats], axis=0)
    std = np.mean([s for _, s in stats], axis=0)
    return StainReference(
        tuple(round(float(v), 3) for v in mean),  # type: ignore[arg-type]
        tuple(round(float(v), 3) for v in std),  # type: ignore[arg-type]
        round(float(np.median(fracs)), 4),
        source,
    )


# --- a synthetic other lab ---------------------------------------------------------------

#: The synthetic lab of :func:`other_lab`: how issue 12 describes real other labs' cells
#: (yellow backgrounds, flatter colours, the cell 1.5x larger in the frame, some blur).
#: Multipliers per RGB channel, then an offset (0..1 scale).
OTHER_LAB_TINT = ((1.05, 1.0, 0.75), (0.02, 0.03, 0.0))
OTHER_LAB_GAMMA = 0.6  # blended 45 % with the identity: a brighter, flatter camera curve
OTHER_LAB_ZOOM = 1.5
OTHER_LAB_BLUR = 0.8  # Gaussian sigma in pixels of a 224 px frame


def other_lab(
    image: np.ndarray,
    *,
    zoom_factor: float = OTHER_LAB_ZOOM,
    blur: float = OTHER_LAB_BLUR,
) -> np.ndarray:
    """A PBC cell as another lab might show it: stain, camera and magnification shifted.

    For lessons and tests where no real other lab's cells are at hand; RGB float 0..255 in
    and out, same size. Deterministic: the same cell always gives the same picture.
    """
    from scipy import ndimage

    x = np.asarray(image, np.float32)
    if zoom_factor != 1.0:
        x = zoom(x, zoom_factor)
    if blur > 0:
        sigma = blur * x.shape[0] / 224.0
        x = ndimage.gaussian_filter(x, sigma=(sigma, sigma, 0))
    x = np.clip(x / 255.0, 0.0, 1.0)
    x = 0.55 * x + 0.45 * x**OTHER_LAB_GAMMA
    mult, offset = (np.asarray(v, np.float32) for v in OTHER_LAB_TINT)
    return np.clip((x * mult + offset) * 255.0, 0.0, 255.0).astype(np.float32)


def write_other_lab(
    cells: Sequence[tuple[str, str]], out_dir: str | Path, **shift: Any
) -> list[Path]:
    """Write :func:`other_lab` copies of ``(path, label)`` cells as ``out_dir/label/name.jpg``.

    The class layout that ``classify`` and ``adapt`` read. Each file is written atomically;
    ``shift`` goes to :func:`other_lab`. Returns the paths written.
    """
    from PIL import Image

    from bloodlib.core.io import write_with

    out_dir = Path(out_dir)
    written = []
    for path, label in cells:
        with Image.open(path) as im:
            rgb = np.asarray(im.convert("RGB"), np.float32)
        shifted = Image.fromarray(other_lab(rgb, **shift).round().astype(np.uint8))
        target = out_dir / label / f"{Path(path).stem}.jpg"
        target.parent.mkdir(parents=True, exist_ok=True)
        written.append(
            write_with(target, lambda p, im=shifted: im.save(p, "JPEG", quality=92), suffix=".jpg")
        )
    return written
