"""Scan a dataset folder into a manifest: one row per file, with its defects.

Every file under the root becomes a row, readable or not; a defect never
raises, it becomes a ``status`` with a human ``reason``. Only ``status == "ok"``
rows are used for training (:attr:`Manifest.usable`). Exact and near copies
share a ``group`` key so that a split can keep them together.

The table is cached under ``cache_dir()/manifests`` keyed by the folder's
listing (paths, sizes, mtimes), so a second scan of an unchanged folder is a
CSV read. Nothing is ever written into the scanned folder.

Each file's row and its defects come from :func:`bloodlib.data.files.inspect_file`, which
no hostile file can stop or stall; the rules across files (exact and near copies, sizes far
from their folder's) are applied here.
"""

from __future__ import annotations

import hashlib
import logging
import os
import warnings
from collections import Counter
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import ImageFile

from bloodlib import CLASSES
from bloodlib.core.config import cache_dir
from bloodlib.core.hashing import sha256_rows
from bloodlib.core.io import write_with
from bloodlib.core.progress import tqdm
from bloodlib.data import files
from bloodlib.data.files import (
    DEFECTS,
    STATUSES,
    class_of,
    display_name,
    inspect_file,
    list_files,
)

log = logging.getLogger(__name__)

#: Bump when columns or rules change: old cached manifests are then ignored.
#: 2: statuses bad_name, not_regular, link_outside, too_large (a v1 cache called a FIFO
#: "unreadable" only after hanging, and a decompression bomb "odd_size").
SCHEMA_VERSION = 2


COLUMNS: tuple[str, ...] = (
    "relpath",
    "path",
    "label",
    "width",
    "height",
    "mode",
    "format",
    "bytes",
    "sha256",
    "dhash",
    "status",
    "reason",
    "group",
    "mean_r",
    "mean_g",
    "mean_b",
    "brightness",
)
_INT_COLUMNS = ("width", "height", "bytes")
_FLOAT_COLUMNS = ("mean_r", "mean_g", "mean_b", "brightness")
_STR_COLUMNS = tuple(c for c in COLUMNS if c not in _INT_COLUMNS + _FLOAT_COLUMNS)

# Size rule for odd_size: relative to the median of the class folder.
_SIZE_RANGE = (0.5, 2.0)
_ASPECT_TOLERANCE = 0.25
# Near copies: dhashes at most this many bits apart share a group. On the PBC dev
# images a JPEG re-encode moves a dhash by 0-3 bits while distinct images stay
# 8 or more bits apart, so 3 joins copies without joining different cells.
DHASH_MAX_DISTANCE = 3


class DataQualityWarning(UserWarning):
    """Issued once per scan when files are excluded."""


@dataclass
class Manifest:
    """The scanned table plus what is not a row (empty or missing classes)."""

    table: pd.DataFrame
    root: Path
    warnings: list[str] = field(default_factory=list)
    from_cache: bool = False
    cache_path: Path | None = None

    @property
    def usable(self) -> pd.DataFrame:
        """Rows to train on (``status == "ok"``)."""
        return self.table[self.table["status"] == "ok"].reset_index(drop=True)

    @property
    def quality(self) -> pd.DataFrame:
        """The data-quality table: every row with a defect and why."""
        bad = self.table[self.table["status"] != "ok"]
        return bad[["relpath", "label", "status", "reason"]].reset_index(drop=True)

    def status_counts(self) -> dict[str, int]:
        """Rows per status, in :data:`STATUSES` order, zero counts left out."""
        counts = Counter(self.table["status"])
        return {s: counts[s] for s in STATUSES if counts[s]}

    def summary(self) -> pd.DataFrame:
        """Counts per class: found / usable / excluded, one column per defect, and a note."""
        t = self.table
        labels = list(CLASSES) + sorted(set(t["label"]) - set(CLASSES))
        counts = pd.crosstab(t["label"], t["status"]) if len(t) else pd.DataFrame()
        counts = counts.reindex(index=labels, fill_value=0)
        out = pd.DataFrame(index=pd.Index(labels, name="label"))
        out["found"] = counts.sum(axis=1).astype(int) if len(t) else 0
        out["usable"] = counts["ok"].astype(int) if "ok" in counts else 0
        out["excluded"] = out["found"] - out["usable"]
        for status in DEFECTS:
            if status in counts and counts[status].sum():
                out[status] = counts[status].astype(int)
        notes = _class_notes(self.root, t)
        out["note"] = [notes.get(lab, "") for lab in labels]
        # Files directly in the root have no folder, hence no label.
        return out.rename(index={"": "(root)"})

    def content_hash(self) -> str:
        """sha256 over sorted (relpath, sha256, status): the data manifest hash for provenance."""
        t = self.table
        return sha256_rows(sorted(zip(t["relpath"], t["sha256"], t["status"], strict=True)))


# --------------------------------------------------------------------------- listing


def _class_notes(root: Path, table: pd.DataFrame | None = None) -> dict[str, str]:
    """'missing folder' / 'empty folder' / 'no usable image' per expected class.

    Empty and missing folders have no rows, so they are noted here instead.
    """
    present: dict[str, Path] = {}
    if root.is_dir():
        for child in root.iterdir():
            cls = class_of(child.name)
            if cls and child.is_dir():
                present[cls] = child
    notes = {}
    for cls in CLASSES:
        if cls not in present:
            notes[cls] = "missing folder"
        elif not any(p.is_file() for p in present[cls].rglob("*")):
            notes[cls] = "empty folder"
        elif table is not None and not ((table["label"] == cls) & (table["status"] == "ok")).any():
            notes[cls] = "no usable image"
    return notes


def _cache_key(root: Path, listing: list[tuple[str, int, int]], max_pixels: int) -> str:
    # os.fsencode: a name that is not UTF-8 (surrogates) still hashes to its own bytes.
    h = hashlib.sha256(f"bloodlib-manifest v{SCHEMA_VERSION} {max_pixels}\n".encode())
    h.update(os.fsencode(str(root)) + b"\n")
    for rel, size, mtime in listing:
        h.update(os.fsencode(rel) + f"\t{size}\t{mtime}\n".encode())
    return h.hexdigest()


# --------------------------------------------------------------------------- one file


# --------------------------------------------------------------------------- table rules


def _flag_odd_sizes(table: pd.DataFrame) -> None:
    """Mark images far off their class folder's median size or aspect ratio."""
    decoded = table[(table["status"] == "ok") & (table["width"] > 0)]
    for _, rows in decoded.groupby("label"):
        med_w, med_h = float(rows["width"].median()), float(rows["height"].median())
        med_aspect = float((rows["width"] / rows["height"]).median())
        lo, hi = _SIZE_RANGE
        for idx, w, h in zip(rows.index, rows["width"], rows["height"], strict=True):
            aspect = w / h
            off_size = not (lo * med_w <= w <= hi * med_w and lo * med_h <= h <= hi * med_h)
            off_aspect = abs(aspect / med_aspect - 1) > _ASPECT_TOLERANCE
            if off_size or off_aspect:
                table.at[idx, "status"] = "odd_size"
                table.at[idx, "reason"] = (
                    f"{w}x{h} is far from the folder's median {med_w:.0f}x{med_h:.0f}"
                )


def flag_copies(table: pd.DataFrame) -> None:
    """Same bytes in one class -> keep the first by relpath; across classes -> exclude all."""
    ok = table[table["status"] == "ok"]
    copies = ok[ok["sha256"].duplicated(keep=False)]  # groupby over 17k singletons is slow
    for _, rows in copies.groupby("sha256"):
        rows = rows.sort_values("relpath")
        if rows["label"].nunique() > 1:
            for idx, rel in zip(rows.index, rows["relpath"], strict=True):
                others = [
                    f"{r} ({lab})"
                    for r, lab in zip(rows["relpath"], rows["label"], strict=True)
                    if r != rel
                ]
                table.at[idx, "status"] = "label_conflict"
                table.at[idx, "reason"] = "byte-identical to " + ", ".join(others)
        else:
            first = rows["relpath"].iloc[0]
            for idx in rows.index[1:]:
                table.at[idx, "status"] = "duplicate"
                table.at[idx, "reason"] = f"exact copy of {first}"


def near_pairs(dhashes: list[str], max_distance: int = DHASH_MAX_DISTANCE) -> list[tuple[int, int]]:
    """Index pairs (i < j) whose dhashes differ in at most ``max_distance`` bits."""
    if len(dhashes) < 2:
        return []
    h = np.array([int(d, 16) for d in dhashes], dtype=np.uint64)
    pairs: list[tuple[int, int]] = []
    block = 512  # bounds memory to block x n uint64 (35 MB for 17k images)
    for start in range(0, len(h), block):
        dist = np.bitwise_count(h[start : start + block, None] ^ h[None, :])
        for i, j in zip(*np.nonzero(dist <= max_distance), strict=True):
            if start + i < j:
                pairs.append((int(start + i), int(j)))
    return pairs


def _assign_groups(table: pd.DataFrame) -> None:
    """group = sha256, merged over near-identical dhash among usable rows (re-encoded copies).

    The key of a merged group is the sha256 of its first member by relpath, so it
    does not depend on row order or on which copy was seen first.
    """
    keys = [
        sha or f"path:{rel}" for sha, rel in zip(table["sha256"], table["relpath"], strict=True)
    ]
    parent: dict[str, str] = {k: k for k in keys}

    def find(k: str) -> str:
        while parent[k] != k:
            parent[k] = parent[parent[k]]
            k = parent[k]
        return k

    near = table.index[(table["status"] == "ok") & (table["dhash"] != "")]
    near_keys = [keys[i] for i in near]
    for i, j in near_pairs(list(table.loc[near, "dhash"])):
        a, b = find(near_keys[i]), find(near_keys[j])
        if a != b:
            parent[max(a, b)] = min(a, b)

    # Name each component after its first member by relpath.
    first: dict[str, str] = {}
    for _, key in sorted(zip(table["relpath"], keys, strict=True)):
        first.setdefault(find(key), key)
    table["group"] = [first[find(k)] for k in keys]


def _build_table(rows: Iterable[dict]) -> pd.DataFrame:
    table = pd.DataFrame(list(rows), columns=list(COLUMNS))
    table = table.sort_values("relpath", kind="mergesort").reset_index(drop=True)
    return _coerce(table)


def _coerce(table: pd.DataFrame) -> pd.DataFrame:
    for col in _INT_COLUMNS:
        table[col] = table[col].astype("int64")
    for col in _FLOAT_COLUMNS:
        table[col] = table[col].astype("float64")
    for col in _STR_COLUMNS:
        table[col] = table[col].fillna("").astype(str)
    return table


# --------------------------------------------------------------------------- scan


def scan(
    root: str | os.PathLike,
    *,
    progress: bool = True,
    use_cache: bool = True,
    workers: int | None = None,
    max_pixels: int | None = None,
) -> Manifest:
    """Scan ``root`` (class-per-folder layout) into a :class:`Manifest`.

    ``workers`` threads decode in parallel (Pillow releases the GIL while
    decoding); the default is twice the CPU count, capped at 16. Images above
    ``max_pixels`` (default :data:`bloodlib.data.files.MAX_PIXELS`) are ``too_large``, never decoded.
    """
    root = Path(root).expanduser().resolve()
    if not root.is_dir():
        raise FileNotFoundError(f"not a folder: {root}")
    limit = files.MAX_PIXELS if max_pixels is None else int(max_pixels)  # read now: a setting
    listing = list_files(root)

    key = _cache_key(root, listing, limit)
    cache_path = cache_dir() / "manifests" / f"{key}.csv.gz"
    table = _read_cache(cache_path, root) if use_cache else None
    from_cache = table is not None
    if table is None:
        table = _scan_files(root, [rel for rel, _, _ in listing], progress, workers, limit)
        if use_cache:
            write_with(cache_path, lambda p: table.to_csv(p, index=False, compression="gzip"))

    notes = _class_notes(root, table)
    found_warnings = [f"class {cls!r}: {note}" for cls, note in notes.items()]
    manifest = Manifest(table, root, found_warnings, from_cache, cache_path if use_cache else None)
    _report(manifest)
    return manifest


def _scan_files(
    root: Path, relpaths: list[str], progress: bool, workers: int | None, max_pixels: int
) -> pd.DataFrame:

    workers = workers or min(16, 2 * (os.cpu_count() or 1))
    lenient = ImageFile.LOAD_TRUNCATED_IMAGES
    if lenient:  # someone relaxed Pillow: truncated files would pass as ok
        log.warning("Pillow LOAD_TRUNCATED_IMAGES is True; strict during the scan")
        ImageFile.LOAD_TRUNCATED_IMAGES = False
    try:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            rows = list(
                tqdm(
                    pool.map(lambda rel: inspect_file(root, rel, max_pixels=max_pixels), relpaths),
                    total=len(relpaths),
                    desc=f"scan {root.name}",
                    unit="img",
                    disable=not progress,
                )
            )
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = lenient
    table = _build_table(rows)
    _flag_odd_sizes(table)
    flag_copies(table)
    _assign_groups(table)
    return table


def _read_cache(path: Path, root: Path) -> pd.DataFrame | None:
    if not path.is_file():
        return None
    try:
        # dtype=str keeps hex keys such as dhash "0123..." from turning into numbers.
        table = pd.read_csv(
            path,
            dtype={c: str for c in _STR_COLUMNS},
            keep_default_na=False,
            na_values={c: [""] for c in _FLOAT_COLUMNS},
        )
        if list(table.columns) != list(COLUMNS):
            return None
        table = _coerce(table)
    except Exception as exc:  # a damaged cache is rebuilt, never fatal
        log.warning("ignoring unreadable manifest cache %s: %s", path, exc)
        return None
    # The key includes the resolved root, but rebuild paths anyway: cheap and exact.
    table["path"] = [display_name(str(root / rel)) for rel in table["relpath"]]
    return table


def _report(manifest: Manifest) -> None:
    """One summary warning per scan, never one per file."""
    counts = {k: v for k, v in manifest.status_counts().items() if k != "ok"}
    parts = []
    if counts:
        total = sum(counts.values())
        detail = ", ".join(f"{n} {status}" for status, n in counts.items())
        parts.append(f"{total} files excluded: {detail} (see Manifest.quality)")
    parts.extend(manifest.warnings)
    if parts:
        warnings.warn(f"{manifest.root}: " + "; ".join(parts), DataQualityWarning, stacklevel=3)
