"""Shared fixtures: an isolated cache, and synthetic PBC-like trees with real defects."""

from __future__ import annotations

import io
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bloodlib import CLASSES

#: File-name prefixes as in the PBC release.
PREFIX = {
    "basophil": "BA",
    "eosinophil": "EO",
    "erythroblast": "ERB",
    "ig": "IG",
    "lymphocyte": "LY",
    "monocyte": "MO",
    "neutrophil": "BNE",
    "platelet": "PLATELET",
}
# The PBC sizes: mostly 360x363, some 366x369 and 360x360, all normal.
NORMAL_SIZES = [(360, 363), (360, 363), (366, 369), (360, 360)]


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch):
    """Every test gets its own empty bloodlib cache; nothing touches ~/.cache."""
    monkeypatch.setenv("BLOODLIB_CACHE", str(tmp_path_factory.mktemp("cache")))


def cell_image(seed: int, size: tuple[int, int] = (360, 363)) -> Image.Image:
    """A smear-like RGB image: pink background, red cells, one purple nucleus."""
    rng = np.random.default_rng(seed)
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w]
    img = np.empty((h, w, 3), np.float32)
    img[:] = (228, 196, 200)
    for _ in range(6):  # red cells
        cx, cy, r = rng.uniform(0, w), rng.uniform(0, h), rng.uniform(25, 45)
        img[(xx - cx) ** 2 + (yy - cy) ** 2 < r**2] = (214, 150, 160)
    cx, cy = w / 2 + rng.uniform(-40, 40), h / 2 + rng.uniform(-40, 40)
    r = rng.uniform(50, 80)
    img[(xx - cx) ** 2 + ((yy - cy) * rng.uniform(0.7, 1.3)) ** 2 < r**2] = (120, 70, 150)
    # Uneven illumination, as under a real microscope; it also keeps flat background
    # from making near-ties that flip dhash bits on re-encoding.
    img *= (1.0 - 0.12 * xx / w - 0.05 * yy / h)[..., None]
    img += rng.normal(0, 2, img.shape)
    return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8), "RGB")


def jpeg_bytes(im: Image.Image, quality: int = 92) -> bytes:
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=quality)
    return buf.getvalue()


@dataclass
class SyntheticTree:
    """A tree on disk and the status each file must get."""

    root: Path
    expected: dict[str, str] = field(default_factory=dict)

    def add(self, relpath: str, data: bytes, status: str = "ok") -> Path:
        path = self.root / relpath
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        self.expected[relpath] = status
        return path

    def usable(self) -> list[str]:
        return sorted(r for r, s in self.expected.items() if s == "ok")


def build_clean_tree(root: Path, per_class: int = 6, seed: int = 0) -> SyntheticTree:
    """All eight classes, ``per_class`` distinct normal-looking JPEGs each."""
    tree = SyntheticTree(root)
    root.mkdir(parents=True, exist_ok=True)
    for c, cls in enumerate(CLASSES):
        for i in range(per_class):
            size = NORMAL_SIZES[i % len(NORMAL_SIZES)]
            im = cell_image(seed * 10_000 + c * 1000 + i, size)
            tree.add(f"{cls}/{PREFIX[cls]}_{1000 + i}.jpg", jpeg_bytes(im))
    return tree


def build_defect_tree(root: Path) -> SyntheticTree:
    """A PBC-like tree carrying one of every defect the manifest knows.

    erythroblast is an empty folder; every other class has four good JPEGs.
    """
    tree = SyntheticTree(root)
    for c, cls in enumerate(CLASSES):
        (root / cls).mkdir(parents=True)
        if cls == "erythroblast":
            continue
        for i in range(4):
            im = cell_image(c * 1000 + i, NORMAL_SIZES[i])
            tree.add(f"{cls}/{PREFIX[cls]}_{i}.jpg", jpeg_bytes(im))

    good = jpeg_bytes(cell_image(999))
    tree.add("basophil/BA_truncated.jpg", good[: len(good) // 2], "truncated")
    png = io.BytesIO()
    cell_image(998).save(png, "PNG")
    tree.add("eosinophil/EO_png.jpg", png.getvalue(), "wrong_format")
    grey = io.BytesIO()
    cell_image(997).convert("L").save(grey, "JPEG")
    tree.add("ig/IG_grey.jpg", grey.getvalue(), "grayscale")
    rgba = io.BytesIO()
    cell_image(996).convert("RGBA").save(rgba, "PNG")
    tree.add("ig/IG_rgba.png", rgba.getvalue(), "rgba")
    cmyk = io.BytesIO()
    cell_image(995).convert("CMYK").save(cmyk, "JPEG")
    tree.add("lymphocyte/LY_cmyk.jpg", cmyk.getvalue(), "cmyk")
    # AppleDouble header: magic 0x00051607, version 0x00020000, then filler.
    tree.add("monocyte/._MO_0.jpg", b"\x00\x05\x16\x07\x00\x02\x00\x00" + b"\0" * 4000, "hidden")
    tree.add("monocyte/MO_copy.jpg", (root / "monocyte/MO_0.jpg").read_bytes(), "duplicate")
    tree.add("neutrophil/BNE_notes.jpg", b"cell counts: 12, 15, 9\n", "not_image")
    tree.add(
        "neutrophil/Thumbs.db",
        b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + b"\0" * 500,
        "non_image_extension",
    )
    conflict = jpeg_bytes(cell_image(994))
    tree.add("neutrophil/BNE_conflict.jpg", conflict, "label_conflict")
    tree.add("eosinophil/EO_conflict.jpg", conflict, "label_conflict")
    tree.add("platelet/PLATELET_huge.jpg", jpeg_bytes(cell_image(993, (1000, 1000))), "odd_size")
    # A re-encoded copy: other bytes, same picture; must share the original's group.
    platelet0 = Image.open(root / "platelet/PLATELET_0.jpg")
    tree.add("platelet/PLATELET_0_q80.jpg", jpeg_bytes(platelet0, quality=80), "ok")
    tree.add("artefacts/ART_0.jpg", jpeg_bytes(cell_image(992)), "unknown_class")
    tree.add("stray.jpg", jpeg_bytes(cell_image(991)), "unknown_class")
    tree.add("notes.txt", b"scanned on a Tuesday\n", "non_image_extension")
    return tree


@pytest.fixture(scope="session")
def _tree_templates(tmp_path_factory: pytest.TempPathFactory) -> dict[str, SyntheticTree]:
    """Build each synthetic tree once per session (about a second each); tests get copies."""
    base = tmp_path_factory.mktemp("templates")
    return {
        "clean": build_clean_tree(base / "clean" / "PBC_dataset_normal_DIB"),
        "defect": build_defect_tree(base / "defect" / "PBC_dataset_normal_DIB"),
    }


def _copy(template: SyntheticTree, root: Path) -> SyntheticTree:
    shutil.copytree(template.root, root)
    return SyntheticTree(root, dict(template.expected))


@pytest.fixture
def clean_tree(tmp_path: Path, _tree_templates) -> SyntheticTree:
    """Eight classes of six distinct, defect-free JPEGs (a fresh copy per test)."""
    return _copy(_tree_templates["clean"], tmp_path / "PBC_dataset_normal_DIB")


@pytest.fixture
def defect_tree(tmp_path: Path, _tree_templates) -> SyntheticTree:
    """A tree with one of every defect; ``expected`` maps relpath -> status."""
    return _copy(_tree_templates["defect"], tmp_path / "PBC_dataset_normal_DIB")


@pytest.fixture
def tree_builder() -> Callable[..., SyntheticTree]:
    """``build_clean_tree(root, per_class, seed)`` for tests that need their own tree."""
    return build_clean_tree
