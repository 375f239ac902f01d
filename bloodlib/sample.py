"""Build the embedded sample: a small stratified subset of a PBC folder, copied byte for byte.

Besides ``per_class`` random usable images per class, the sample can carry
one real example of each teaching defect found in the source (a hidden file,
a cross-class label conflict, a same-class exact duplicate) so that the data
notebook shows real problems, not staged ones. Used once to make
``data/sample``::

    python -m bloodlib.sample /path/to/PBC_dataset_normal_DIB data/sample
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

from bloodlib import CLASSES
from bloodlib.config import DEFAULT_SEED
from bloodlib.manifest import Manifest, scan


def make_sample(
    src: str | os.PathLike,
    dst: str | os.PathLike,
    per_class: int = 30,
    seed: int = DEFAULT_SEED,
    *,
    teaching_defects: bool = True,
    overwrite: bool = False,
    progress: bool = False,
) -> pd.DataFrame:
    """Copy a seeded stratified subset of ``src`` into ``dst``; return what was copied and why.

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

    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=dst.parent, prefix=f".{dst.name}.tmp-"))
    try:
        for rel in picked["relpath"]:
            target = tmp / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src / rel, target)  # bytes only: no read-only modes from the source
        _swap_in(tmp, dst)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return picked


def select(
    manifest: Manifest, per_class: int, seed: int, *, teaching_defects: bool = True
) -> pd.DataFrame:
    """The rows to copy: ``relpath``, ``label``, ``status`` and ``why`` (random / teaching)."""
    table = manifest.table
    rng = np.random.default_rng(seed)
    chosen: dict[str, str] = {}
    for cls in CLASSES:
        pool = sorted(table.loc[(table["label"] == cls) & (table["status"] == "ok"), "relpath"])
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
    parser.add_argument("src", help="a PBC folder in class layout")
    parser.add_argument("dst", help="where to write the sample")
    parser.add_argument("--per-class", type=int, default=30)
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED)
    parser.add_argument("--overwrite", action="store_true")
    args = parser.parse_args(argv)
    picked = make_sample(
        args.src, args.dst, args.per_class, args.seed, overwrite=args.overwrite, progress=True
    )
    print(picked["why"].value_counts().to_string())


if __name__ == "__main__":
    main()
