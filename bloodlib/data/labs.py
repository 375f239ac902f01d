"""Another lab's cells as bloodlib reads them: a folder in the class layout (labelled), or
any folder of cells (unlabelled), with one fingerprint of what it holds.

The other lab of notebook 05 is such a folder, real or *synthetic* (:func:`synthetic_lab`:
the run's PBC test cells shifted by :func:`bloodlib.data.look.other_lab`); ``adapt`` learns
from the same folders. Colour and size statistics of a lab's cells (:func:`cell_statistics`)
say how it differs from PBC before any model runs.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from bloodlib import CLASSES
from bloodlib.core.config import DEFAULT_SEED
from bloodlib.core.errors import BloodlibError
from bloodlib.core.hashing import sha256_rows
from bloodlib.core.io import read_json, write_json
from bloodlib.data import look, stain
from bloodlib.data.files import CLASSIFIABLE, COPY_STATUSES, class_of, inspect_file, list_files
from bloodlib.data.manifest import flag_copies


class LabFolderError(BloodlibError):
    """A folder of a lab's cells that cannot be read as asked (no class folder, no usable cell)."""


#: At most this many unlabelled cells, drawn with the seed: they are decoded once and kept in
#: memory (2,000 cells at 224 px: 300 MB), and 200 steps of 16 see 3,200 of them anyway.
MAX_UNLABELLED = 2000


def labelled_cells(folder: str | Path) -> tuple[pd.DataFrame, dict[str, int], pd.DataFrame]:
    """Usable cells of a class-layout folder (relpath, path, label, sha256), the folders that
    name no class (folder -> files), and the copies left out (relpath, label, status, reason).

    Copies follow the scan's rule (``data.manifest``): the same bytes twice in one class keep
    the first by relpath (``duplicate``), the same bytes under two classes are all left out
    (``label_conflict``), so one cell is never both learnt from and scored, nor learnt with
    two labels. Raises :class:`LabFolderError` when no folder names a class, or when a class
    folder holds no usable cell (empty, or every file defective), naming the folder.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise LabFolderError(f"not a folder: {folder}")
    files = pd.DataFrame([inspect_file(folder, rel) for rel, _, _ in list_files(folder)])
    if files.empty:
        files = pd.DataFrame(columns=["relpath", "path", "label", "status", "reason", "sha256"])
    parts = files["relpath"].str.split("/")
    files["folder"] = parts.str[0].where(parts.str.len() > 1, ".")
    classed = files["folder"].map(class_of).notna()
    ignored = files.loc[~classed, "folder"].value_counts().sort_index().to_dict()
    class_dirs = sorted(c.name for c in folder.iterdir() if c.is_dir() and class_of(c.name))
    if not class_dirs:
        raise LabFolderError(
            f"{folder} has no class folder: put each lab's cells in a sub-folder named for "
            f"its class ({', '.join(CLASSES)}; any case)"
        )
    files = files[classed].copy()
    flag_copies(files)
    good = files[files["status"] == "ok"]  # not "hidden", even when it decodes
    empty = sorted(set(class_dirs) - set(good["folder"]))
    if empty:
        raise LabFolderError(
            f"class folder(s) {', '.join(empty)} in {folder} hold no usable cell image "
            "(empty, or every file unreadable): add labelled cells there or remove the folder; "
            "`python -m bloodlib scan --data FOLDER` lists what is wrong with each file"
        )
    copies = files[files["status"].isin(COPY_STATUSES)][["relpath", "label", "status", "reason"]]
    good = good[["relpath", "path", "label", "sha256"]].sort_values("relpath")
    return good.reset_index(drop=True), ignored, copies.reset_index(drop=True)


def unlabelled_cells(
    folder: str | Path, exclude: set[str], seed: int = DEFAULT_SEED, limit: int = MAX_UNLABELLED
) -> pd.DataFrame:
    """Readable images anywhere under ``folder`` (relpath, path, sha256), labels not read.

    Images whose content is in ``exclude`` (the labelled support) and repeated contents are
    left out; at most ``limit``, drawn with ``seed``. Raises :class:`LabFolderError` when none is left.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise LabFolderError(f"not a folder: {folder}")
    rows = [inspect_file(folder, rel) for rel, _, _ in list_files(folder)]
    files = pd.DataFrame(rows, columns=["relpath", "path", "status", "sha256"])
    good = files[files["status"].isin(CLASSIFIABLE)]  # hidden files are "hidden"
    good = good[~good["sha256"].isin(exclude)].drop_duplicates("sha256")
    if good.empty:
        raise LabFolderError(
            f"{folder} holds no usable image besides the labelled cells: give a folder of the "
            "lab's unlabelled cells (any layout), or leave out --unlabelled"
        )
    if len(good) > limit:
        good = good.sample(limit, random_state=seed)
    return good[["relpath", "path", "sha256"]].sort_values("relpath").reset_index(drop=True)


#: Cells per lab whose colour and size are measured (a random subset drawn with the seed):
#: medians over 100 cells move by about a percent, and the pass stays a few seconds.
STATS_CELLS = 100


@dataclass
class OtherLab:
    """A lab's labelled cells: ``cells`` has relpath, path, label, sha256 (relpath order)."""

    folder: Path
    cells: pd.DataFrame
    synthetic: bool
    fingerprint: str
    ignored: dict[str, int]
    #: Copies left out (relpath, label, status, reason): see :func:`labelled_cells`.
    copies: pd.DataFrame = field(default_factory=pd.DataFrame)

    @property
    def classes_present(self) -> list[str]:
        """The lab's classes, in the model's (CLASSES) order."""
        have = set(self.cells["label"])
        return [c for c in CLASSES if c in have]

    def describe(self) -> dict[str, Any]:
        """What ``domain_shift.json`` records about the lab."""
        return {
            "path": str(self.folder),
            "synthetic": self.synthetic,
            "fingerprint": self.fingerprint,
            "n_cells": int(len(self.cells)),
            "classes_present": self.classes_present,
            "per_class": self.cells["label"].value_counts().reindex(self.classes_present).to_dict(),
            "ignored": self.ignored,
            "copies_left_out": int(len(self.copies)),
        }


def fingerprint(cells: pd.DataFrame) -> str:
    """One hash of a lab's cells: relpaths, labels and content hashes (24 hex digits)."""
    rows = cells.sort_values("relpath")[["relpath", "label", "sha256"]]
    return sha256_rows(rows.itertuples(index=False))[:24]


def load_lab(folder: str | Path, synthetic: bool = False) -> OtherLab:
    """A class-layout folder's usable cells (see ``lab.labelled_cells``) and their fingerprint."""

    folder = Path(folder)
    cells, ignored, copies = labelled_cells(folder)
    return OtherLab(folder, cells, synthetic, fingerprint(cells), ignored, copies)


def synthetic_lab(test_cells: pd.DataFrame, out_dir: str | Path) -> Path:
    """Write ``look.other_lab`` copies of ``test_cells`` (path, label) into ``out_dir``.

    ``out_dir`` belongs to the run folder (never a data folder). Deterministic, so a folder
    already made from the same cells is kept as it is; one made from other cells (another
    split) is replaced. A folder that exists without this function's marker
    (:func:`synthetic_marker`) is refused.
    """
    out_dir = Path(out_dir)
    source = sorted(zip(test_cells["path"].astype(str), test_cells["label"], strict=True))
    if not source:
        raise ValueError("no test cells to make a synthetic lab from: run notebook 01 first")
    # As JSON reads it back (tuples become lists), so an unchanged lab compares equal.
    want = json.loads(json.dumps({"cells": source, "shift": _shift_description()}))
    marker = synthetic_marker(out_dir)
    if out_dir.exists():
        if not marker.is_file():
            raise FileExistsError(
                f"{out_dir} exists but was not written by bloodlib.data.labs.synthetic_lab: move it "
                "away or give notebook 05 another run_dir"
            )
        if read_json(marker) == want:
            return out_dir
        shutil.rmtree(out_dir)  # made from another split or another shift: make it again
    look.write_other_lab(source, out_dir)
    write_json(marker, want)
    return out_dir


def synthetic_marker(out_dir: str | Path) -> Path:
    """Beside the folder (``<folder>.json``), not in it: a lab folder holds only cells."""
    out_dir = Path(out_dir)
    return out_dir.with_name(f"{out_dir.name}.json")


def _shift_description() -> dict[str, Any]:
    return {
        "tint": look.OTHER_LAB_TINT,
        "gamma": look.OTHER_LAB_GAMMA,
        "zoom": look.OTHER_LAB_ZOOM,
        "blur": look.OTHER_LAB_BLUR,
    }


def sample_cells(
    cells: pd.DataFrame, n: int = STATS_CELLS, seed: int = DEFAULT_SEED
) -> pd.DataFrame:
    """At most ``n`` rows drawn with ``seed`` (all of them when there are fewer), in path order."""
    if len(cells) <= n:
        return cells.reset_index(drop=True)
    return cells.sample(n, random_state=seed).sort_values("path").reset_index(drop=True)


def cell_statistics(paths: Sequence[str], image_size: int) -> pd.DataFrame:
    """Per cell, at the model's input size: CIELAB means and spreads, nucleus fraction.

    Columns: ``L``, ``a``, ``b`` (means), ``L_std``, ``a_std``, ``b_std``, and
    ``nucleus_fraction`` (``look.nucleus_fraction``; NaN where no nucleus was found).
    """
    from bloodlib.data.pipeline import (
        load_images,  # lazy: decoding needs TensorFlow, a lab's folder does not
    )

    rows = []
    for image in load_images(list(paths), image_size):
        mean, std = stain.lab_stats(image)
        frac = look.nucleus_fraction(image)
        rows.append([*mean, *std, np.nan if frac is None else frac])
    return pd.DataFrame(
        rows, columns=["L", "a", "b", "L_std", "a_std", "b_std", "nucleus_fraction"], dtype=float
    )


def shift_table(stats: Mapping[str, pd.DataFrame]) -> pd.DataFrame:
    """Median of each statistic per lab (columns: the labs), and the nuclei found."""
    table = pd.DataFrame({lab: s.median() for lab, s in stats.items()})
    table.loc["nuclei found"] = [
        float(s["nucleus_fraction"].notna().mean()) for s in stats.values()
    ]
    return table
