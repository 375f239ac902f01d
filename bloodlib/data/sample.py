"""Build the embedded sample: a seeded, stratified subset of a PBC folder, stored small.

Besides ``per_class`` random usable images per class (at most one per group of
near copies), the sample carries one real example of each teaching defect found
in the source (a hidden file, a cross-class label conflict, a same-class exact
duplicate) so that the data notebook shows real problems, not staged ones.

Cells are stored smaller than the release (the centre square, resized, JPEG
re-encoded) so that enough of them for a meaningful test split fit in the
repository. Every file's origin is recorded in ``<dst>.csv`` and the recipe in
``<dst>.json`` beside the sample folder. ``data/sample`` was made with::

    python -m bloodlib.data.sample --source /path/to/PBC_dataset_normal_DIB --overwrite
"""

from __future__ import annotations

import argparse
import io
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import IO

import numpy as np
import pandas as pd
from PIL import Image

from bloodlib import CLASSES
from bloodlib.core.config import DEFAULT_SEED, SAMPLE_DIR
from bloodlib.core.hashing import sha256_file
from bloodlib.core.io import write_json, write_with
from bloodlib.data.manifest import Manifest, scan

#: The recipe of the shipped ``data/sample`` (``python -m bloodlib.data.sample`` defaults).
#: 125 per class: with the 0.7/0.1/0.2 split this leaves 200 test cells (the classroom run
#: needs at least 150 to show an accuracy worth reading). 160 px is notebook 03's sample
#: input size, so fine-tuning reads the pixels as stored; JPEG quality 90 keeps the stain's
#: granules and the whole sample near 6 MB (data/ must stay under 10 MB).
RECIPE = {"per_class": 125, "size": 160, "quality": 90, "seed": DEFAULT_SEED}

# Statuses of rows that decode to a colour image and are re-encoded when resizing. Any
# other teaching row (a hidden non-image) is copied byte for byte: its bytes are the defect.
_IMAGE_STATUSES = {"ok", "duplicate", "label_conflict"}


def make_sample(
    src: str | os.PathLike,
    dst: str | os.PathLike,
    per_class: int = RECIPE["per_class"],
    seed: int = DEFAULT_SEED,
    *,
    size: int | None = None,
    quality: int = RECIPE["quality"],
    teaching_defects: bool = True,
    overwrite: bool = False,
    progress: bool = False,
) -> pd.DataFrame:
    """Write a seeded stratified subset of ``src`` into ``dst``; return what was written and why.

    ``size=None`` copies the files byte for byte; an integer stores each image's
    centre square resized to ``size`` x ``size`` as a JPEG of ``quality``. The
    table (``relpath``, ``label``, ``status`` in the source, ``why``,
    ``source_sha256``, stored ``sha256`` and ``bytes``) is also written to
    ``<dst>.csv`` and the recipe to ``<dst>.json``.
    The copy is built beside ``dst`` and renamed into place, so ``dst`` is either
    the old sample or the complete new one. ``src`` is only read.
    """
    src, dst = Path(src).resolve(), Path(dst).resolve()
    if dst == src or dst.is_relative_to(src):
        raise ValueError(f"refusing to write the sample inside its source {src}")
    if dst.exists() and any(dst.iterdir()) and not overwrite:
        raise FileExistsError(f"{dst} is not empty; pass overwrite=True to replace it")

    manifest = scan(src, progress=progress)
    picked = select(manifest, per_class, seed, teaching_defects=teaching_defects)
    source_sha = manifest.table.set_index("relpath")["sha256"]

    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=dst.parent, prefix=f".{dst.name}.tmp-"))
    stored: list[dict] = []
    try:
        for rel, status in zip(picked["relpath"], picked["status"], strict=True):
            target = tmp / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            if size is None or status not in _IMAGE_STATUSES:
                shutil.copyfile(src / rel, target)  # bytes only: no read-only modes
            else:
                target.write_bytes(shrink(src / rel, size, quality))
            stored.append({"sha256": sha256_file(target), "bytes": target.stat().st_size})
        _swap_in(tmp, dst)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise

    picked["source_sha256"] = [source_sha[r] for r in picked["relpath"]]
    picked = pd.concat([picked, pd.DataFrame(stored, index=picked.index)], axis=1)
    write_with(dst.with_suffix(".csv"), lambda p: picked.to_csv(p, index=False))
    write_json(
        dst.with_suffix(".json"),
        {
            "source": src.name,
            "per_class": per_class,
            "seed": seed,
            "size": size,
            "quality": quality if size is not None else None,
            "transform": (
                "byte-for-byte copies"
                if size is None
                else "centre square crop, Lanczos resize, RGB JPEG (4:2:0, optimized)"
            ),
            "teaching_defects": teaching_defects,
            "files": len(picked),
            "bytes": int(picked["bytes"].sum()),
        },
    )
    return picked


def shrink(path: str | os.PathLike | IO[bytes], size: int, quality: int) -> bytes:
    """The JPEG bytes of an image's centre square resized to ``size`` x ``size``.

    The square is the largest centred one, so a PBC image (about 360x363, the cell in
    its middle) loses at most a few border rows and nothing is stretched.
    """
    with Image.open(path) as im:
        rgb = im.convert("RGB")
    w, h = rgb.size
    side = min(w, h)
    left, top = (w - side) // 2, (h - side) // 2
    square = rgb.crop((left, top, left + side, top + side))
    small = square.resize((size, size), Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    small.save(buf, "JPEG", quality=quality, optimize=True)
    return buf.getvalue()


def select(
    manifest: Manifest, per_class: int, seed: int, *, teaching_defects: bool = True
) -> pd.DataFrame:
    """The rows to copy: ``relpath``, ``label``, ``status`` and ``why`` (random / teaching).

    The random draw takes at most one image per group of near copies (the manifest's
    ``group``), so re-encoded copies of one cell never fill the sample twice.
    """
    table = manifest.table
    rng = np.random.default_rng(seed)
    chosen: dict[str, str] = {}
    for cls in CLASSES:
        usable = table[(table["label"] == cls) & (table["status"] == "ok")].sort_values("relpath")
        pool = list(usable.drop_duplicates("group")["relpath"])
        take = min(per_class, len(pool))
        for i in sorted(rng.choice(len(pool), size=take, replace=False)) if take else []:
            chosen[pool[i]] = "random"
    if teaching_defects:
        for rel, why in _teaching_rows(table).items():
            chosen.setdefault(rel, why)
    rows = table.set_index("relpath").loc[sorted(chosen), ["label", "status"]].reset_index()
    rows["why"] = [chosen[r] for r in rows["relpath"]]
    return rows


def _teaching_rows(table: pd.DataFrame) -> dict[str, str]:
    """The first real hidden file, label-conflict set and duplicate pair in class folders."""
    in_class = table[table["label"].isin(CLASSES)].sort_values("relpath")
    picked: dict[str, str] = {}
    hidden = in_class[in_class["status"] == "hidden"]
    if len(hidden):
        picked[hidden["relpath"].iloc[0]] = "teaching: hidden file"
    conflicts = in_class[in_class["status"] == "label_conflict"]
    if len(conflicts):
        sha = conflicts["sha256"].iloc[0]
        for rel in conflicts.loc[conflicts["sha256"] == sha, "relpath"]:
            picked[rel] = "teaching: label conflict"
    dups = in_class[in_class["status"] == "duplicate"]
    if len(dups):
        sha = dups["sha256"].iloc[0]
        pair = in_class[(in_class["sha256"] == sha) & in_class["status"].isin(["ok", "duplicate"])]
        for rel in pair["relpath"]:
            picked[rel] = "teaching: exact duplicate"
    return picked


def _swap_in(tmp: Path, dst: Path) -> None:
    """Replace ``dst`` by ``tmp`` with renames (the old folder is removed last)."""
    old = None
    if dst.exists():
        old = dst.with_name(f".{dst.name}.old-{os.getpid()}")
        os.rename(dst, old)
    os.rename(tmp, dst)
    if old is not None:
        shutil.rmtree(old)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", required=True, help="a PBC folder in class layout")
    parser.add_argument("--dst", default=str(SAMPLE_DIR), help="where to write the sample")
    parser.add_argument("--per-class", type=int, default=RECIPE["per_class"])
    parser.add_argument("--seed", type=int, default=RECIPE["seed"])
    parser.add_argument(
        "--size", type=int, default=RECIPE["size"], help="side in pixels; 0 copies the files"
    )
    parser.add_argument("--quality", type=int, default=RECIPE["quality"], help="JPEG quality")
    parser.add_argument("--overwrite", action="store_true")
    args = parser.parse_args(argv)
    picked = make_sample(
        args.source,
        args.dst,
        args.per_class,
        args.seed,
        size=args.size or None,
        quality=args.quality,
        overwrite=args.overwrite,
        progress=True,
    )
    print(picked["why"].value_counts().to_string())
    print(f"{len(picked)} files, {picked['bytes'].sum() / 2**20:.1f} MB", file=sys.stderr)


if __name__ == "__main__":
    main()


def _origins(sample_dir: Path = SAMPLE_DIR) -> pd.DataFrame:
    """The sample's ``<sample>.csv``: each stored cell's content hash and its original's."""
    return pd.read_csv(sample_dir.with_suffix(".csv"), usecols=["sha256", "source_sha256"])


def source_of(hashes: pd.Series | list[str], sample_dir: Path = SAMPLE_DIR) -> list[str | None]:
    """The original (in the PBC release) of each sample cell, by content hash; None if unknown."""
    table = _origins(sample_dir)
    origin = dict(zip(table["sha256"], table["source_sha256"], strict=True))
    return [origin.get(h) for h in hashes]


def copies_of(hashes: pd.Series | list[str], sample_dir: Path = SAMPLE_DIR) -> list[str | None]:
    """The sample's copy of each PBC original, by content hash; None where the sample has none."""
    table = _origins(sample_dir)
    copy = dict(zip(table["source_sha256"], table["sha256"], strict=True))
    return [copy.get(h) for h in hashes]
