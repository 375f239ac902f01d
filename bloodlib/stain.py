"""Colour and scale normalisation of another lab's cells towards PBC's look.

Two transforms of decoded images (RGB float 0..255, any size), applied before the
model's own preprocessing (``classify --normalize reinhard --rescale-cell``):

- :func:`reinhard`: Reinhard et al. (2001), "Color transfer between images": shift and
  scale each channel of the image in CIELAB so its mean and standard deviation match a
  reference. The reference is PBC's (:data:`PBC_REFERENCE`), measured on PBC cells.
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

#: Names accepted by ``--normalize`` (``none`` leaves colours alone).
NORMALIZE_METHODS = ("none", "reinhard")

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
    border = np.concatenate([x[0], x[-1], x[:, 0], x[:, -1]])
    out = np.empty_like(x)
    out[:] = np.median(border, axis=0)
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


# --- for classify and notebooks ----------------------------------------------------------


def check_normalize(normalize: str | None) -> str:
    """The normalisation's canonical name, or a ValueError listing the known ones."""
    name = (normalize or "none").lower()
    if name not in NORMALIZE_METHODS:
        raise ValueError(
            f"unknown colour normalisation {normalize!r}; use one of {', '.join(NORMALIZE_METHODS)}"
        )
    return name


def lab_zoom(
    images: Sequence[np.ndarray],
    normalize: str | None = None,
    reference: StainReference = PBC_REFERENCE,
) -> float:
    """One zoom for a whole lab: PBC's nucleus fraction over the median of these cells'.

    Magnification belongs to the microscope, not to the cell, and nucleus size differs by
    class (a monocyte's is large, a neutrophil's lobes small): one factor from many cells
    keeps each class's size relative to the others, which a per-cell zoom would erase.
    1.0 when no nucleus is found or the factor is outside :data:`ZOOM_LIMITS`.
    """
    name = check_normalize(normalize)
    fracs = []
    for im in images:
        if name == "reinhard":
            im = reinhard(im, reference)
        f = nucleus_fraction(im)
        if f is not None:
            fracs.append(f)
    if not fracs:
        return 1.0
    factor = reference.nucleus_fraction / float(np.median(fracs))
    return float(factor) if ZOOM_LIMITS[0] <= factor <= ZOOM_LIMITS[1] else 1.0


def make_transform(
    normalize: str | None = None,
    zoom_factor: float | None = None,
    reference: StainReference = PBC_REFERENCE,
) -> Callable[[np.ndarray], np.ndarray] | None:
    """A batch ``(n, h, w, 3)`` -> batch function applying the chosen normalisations.

    ``zoom_factor``: one zoom for every image (see :func:`lab_zoom`); None or 1 leaves the
    scale alone. Colour first, then scale. Returns None when nothing is asked for.
    """
    name = check_normalize(normalize)
    rescale = zoom_factor is not None and abs(zoom_factor - 1.0) > 1e-6
    if name == "none" and not rescale:
        return None

    def one(image: np.ndarray) -> np.ndarray:
        if name == "reinhard":
            image = reinhard(image, reference)
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

    from bloodlib.io import write_with

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
