"""What every figure shares: the house style, thumbnails of cells, and saving a figure."""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from PIL import Image

from bloodlib import CLASSES
from bloodlib.core.io import atomic_path

STYLE = "whitegrid"


SPLIT_ORDER = ("train", "val", "test")


THUMB = 160  # px; thumbnails keep galleries of large images light in memory and in PNGs


def save_figure(fig: Figure, path: str | os.PathLike, dpi: int = 120, **kwargs: Any) -> Path:
    """Write ``fig`` atomically (temp file beside ``path``, then rename); create parent folders.

    The format follows the suffix of ``path`` (png when there is none).
    """
    path = Path(path)
    fmt = path.suffix.lstrip(".").lower() or "png"
    kwargs.setdefault("bbox_inches", "tight")
    with atomic_path(path, suffix=f".{fmt}") as tmp:
        fig.savefig(tmp, format=fmt, dpi=dpi, **kwargs)
    return path


def ordered_classes(labels: Iterable[Any], classes: Sequence[str] | None = None) -> list[str]:
    """Known classes in canonical order first, then any unexpected labels sorted."""
    present = {str(x) for x in labels if pd.notna(x)}
    order = list(classes) if classes is not None else list(CLASSES)
    return [c for c in order if c in present] + sorted(present - set(order))


def usable_rows(table: pd.DataFrame) -> pd.DataFrame:
    if "status" not in table.columns:
        return table
    return table[table["status"] == "ok"]


def thumbnail(path: Any, size: int = THUMB) -> Image.Image | None:
    try:
        with Image.open(path) as im:
            im = im.convert("RGB")
            im.thumbnail((size, size))
            return im
    except (OSError, ValueError, TypeError):
        return None  # a missing/broken file is drawn as a placeholder, not a crash


def image_axis(ax: Axes) -> None:
    """Hide ticks and frame but keep the axis on, so a y-label (row name) still shows."""
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_visible(False)
    ax.grid(False)


def annotate_bars(ax: Axes, fmt: str = "{:.0f}", fontsize: int = 8) -> None:
    for container in ax.containers:
        ax.bar_label(container, fmt=fmt, fontsize=fontsize, padding=2)


def model_title(text: str, model_name: str) -> str:
    return f"{model_name}: {text}" if model_name else text


def overlay(image: Any, heatmap: Any, alpha: float = 0.45, cmap: str = "jet") -> np.ndarray:
    """``image`` (H, W, 3; 0..255) with ``heatmap`` (h, w; 0..1) drawn over it in ``cmap``.

    A heatmap of another size is resized (bilinear) to the image. Returns uint8 RGB.
    """

    img = np.clip(np.asarray(image, np.float32), 0, 255)
    if img.ndim != 3 or img.shape[-1] != 3:
        raise ValueError(f"image must be (H, W, 3) RGB, got shape {img.shape}")
    heat = np.clip(np.asarray(heatmap, np.float32), 0.0, 1.0)
    if heat.ndim != 2:
        raise ValueError(f"heatmap must be (H, W), got shape {heat.shape}")
    if heat.shape != img.shape[:2]:
        resized = Image.fromarray(heat, mode="F").resize(img.shape[1::-1], Image.BILINEAR)
        heat = np.clip(np.asarray(resized, np.float32), 0.0, 1.0)
    colour = matplotlib.colormaps[cmap](heat)[..., :3] * 255.0
    return np.clip((1 - alpha) * img + alpha * colour, 0, 255).round().astype(np.uint8)
