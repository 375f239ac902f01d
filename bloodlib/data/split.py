"""A leak-free train/val/test split: stratified by class, copies kept together.

Only usable manifest rows are split. Rows sharing a ``group`` (exact or near
copies) always land in the same split, so a test image never has a twin in
training. The split is a pure function of (rows, fractions, seed): the input's
row order does not matter, and the saved CSV is byte-identical between runs.
"""

from __future__ import annotations

import os
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import pandas as pd

from bloodlib import CLASSES
from bloodlib.core.config import DEFAULT_SEED
from bloodlib.core.hashing import sha256_rows
from bloodlib.core.io import write_with
from bloodlib.data.manifest import Manifest

SPLITS: tuple[str, ...] = ("train", "val", "test")
SPLIT_COLUMNS: tuple[str, ...] = ("relpath", "path", "label", "group", "sha256", "split")


def make_split(
    data: Manifest | pd.DataFrame,
    fractions: tuple[float, float, float] = (0.7, 0.1, 0.2),
    seed: int = DEFAULT_SEED,
) -> pd.DataFrame:
    """Assign every usable row to train/val/test, stratified by label and group-aware.

    Groups are visited largest first, then in a seeded random order; each goes
    to the split whose per-class quota it fills best. With singleton groups this
    hits every class's quota to within one image.
    """
    table = _usable(data)
    quota = _check_fractions(fractions)
    if table.empty:
        return pd.DataFrame(columns=list(SPLIT_COLUMNS))

    members: dict[str, Counter] = defaultdict(Counter)
    for key, label in zip(table["group"], table["label"], strict=True):
        members[key][label] += 1

    # Sort first so the input's row order cannot matter; then shuffle by seed.
    keys = sorted(members)
    rng = np.random.default_rng(seed)
    keys = [keys[i] for i in rng.permutation(len(keys))]
    keys.sort(key=lambda k: -sum(members[k].values()))  # stable sort: big groups first

    per_label = table["label"].value_counts()
    target = {lab: {s: per_label[lab] * quota[s] for s in SPLITS} for lab in per_label.index}
    filled = {lab: dict.fromkeys(SPLITS, 0) for lab in per_label.index}
    active = [s for s in SPLITS if quota[s] > 0]

    assigned: dict[str, str] = {}
    for key in keys:
        counts = members[key]
        # Largest remaining room wins; ties go to the earlier split in SPLITS.
        best = max(
            active,
            key=lambda s: sum(n * (target[lab][s] - filled[lab][s]) for lab, n in counts.items()),
        )
        assigned[key] = best
        for lab, n in counts.items():
            filled[lab][best] += n

    out = table.assign(split=table["group"].map(assigned))
    return out[list(SPLIT_COLUMNS)].reset_index(drop=True)


def hold_out(df: pd.DataFrame, hashes: set[str]) -> pd.DataFrame:
    """``df`` with the rows whose content is in ``hashes`` moved to the test split, and every
    copy of them (their ``group``) with them, so no twin of a held-out cell is learnt from."""
    groups = set(df.loc[df["sha256"].isin(hashes), "group"])
    return df.assign(split=df["split"].where(~df["group"].isin(groups), "test"))


def check_split(df: pd.DataFrame) -> None:
    """Raise ValueError if a group or an identical file appears in more than one split."""
    for col in ("group", "sha256"):
        spread = df[df[col] != ""].groupby(col)["split"].nunique()
        leaks = spread[spread > 1]
        if len(leaks):
            raise ValueError(f"{len(leaks)} {col} keys span several splits, e.g. {leaks.index[0]}")


def save_split(df: pd.DataFrame, path: str | os.PathLike) -> Path:
    """Write the split as CSV, atomically (sorted by relpath, stable bytes)."""
    out = df[list(SPLIT_COLUMNS)].sort_values("relpath", kind="mergesort")
    return write_with(path, lambda p: out.to_csv(p, index=False, lineterminator="\n"))


def load_split(
    path: str | os.PathLike, root: str | os.PathLike | None = None, *, check: bool = True
) -> pd.DataFrame:
    """Read a split CSV; with ``root``, rebuild absolute paths under it; check files exist."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no split file at {path}")
    df = pd.read_csv(path, dtype=str, keep_default_na=False)
    missing_cols = [c for c in SPLIT_COLUMNS if c not in df.columns]
    if missing_cols:
        raise ValueError(f"{path} is not a split file: missing columns {missing_cols}")
    bad = sorted(set(df["split"]) - set(SPLITS))
    if bad:
        raise ValueError(f"{path}: unknown split names {bad}; expected {list(SPLITS)}")
    if root is not None:
        base = Path(root).expanduser().resolve()
        df["path"] = [str(base / rel) for rel in df["relpath"]]
    if check:
        gone = [p for p in df["path"] if not os.path.isfile(p)]
        if gone:
            hint = (
                "pass root= the dataset folder it was made from"
                if root is None
                else f"is {root} the dataset folder this split was made from?"
            )
            raise FileNotFoundError(
                f"{len(gone)} of {len(df)} files in {path} are missing, e.g. {gone[0]}; {hint}"
            )
    return df


def split_summary(df: pd.DataFrame) -> pd.DataFrame:
    """Images per class (rows) and split (columns), with a total column."""
    labels = [c for c in CLASSES if c in set(df["label"])] + sorted(set(df["label"]) - set(CLASSES))
    table = pd.crosstab(df["label"], df["split"]).reindex(
        index=labels, columns=list(SPLITS), fill_value=0
    )
    table["total"] = table.sum(axis=1)
    table.index.name, table.columns.name = "label", None
    return table


def _usable(data: Manifest | pd.DataFrame) -> pd.DataFrame:
    """Usable rows with every split column present, sorted by relpath."""
    table = data.usable if isinstance(data, Manifest) else data
    if "status" in table.columns:
        table = table[table["status"] == "ok"]
    for col in ("relpath", "label"):
        if col not in table.columns:
            raise ValueError(f"cannot split a table without a {col!r} column")
    table = table.copy()
    if "sha256" not in table.columns:
        table["sha256"] = ""
    if "path" not in table.columns:
        table["path"] = table["relpath"]
    if "group" not in table.columns:
        table["group"] = ""
    for col in ("sha256", "path", "group"):
        table[col] = table[col].fillna("").astype(str)
    # A row without a group is its own group (by content if known, else by name).
    fallback = table["sha256"].where(table["sha256"] != "", "path:" + table["relpath"])
    table["group"] = table["group"].where(table["group"] != "", fallback)
    if table["relpath"].duplicated().any():
        raise ValueError("relpath values must be unique")
    return table.sort_values("relpath", kind="mergesort").reset_index(drop=True)


def _check_fractions(fractions: tuple[float, float, float]) -> dict[str, float]:
    values = [float(f) for f in fractions]
    if len(values) != len(SPLITS):
        raise ValueError(
            f"fractions needs {len(SPLITS)} values (train, val, test), got {fractions}"
        )
    if any(f < 0 for f in values) or values[0] <= 0:
        raise ValueError(f"fractions must be >= 0 with train > 0, got {fractions}")
    if not np.isclose(sum(values), 1.0, atol=1e-6):
        raise ValueError(f"fractions must sum to 1, got {fractions} (sum {sum(values)})")
    return dict(zip(SPLITS, values, strict=True))


#: Hex digits of each content hash a model's sidecar keeps of the cells it was trained on:
#: 48 bits, so a test cell is mistaken for a training cell about once in 10^10 (at 17,000
#: training cells), and the record stays small (15 bytes a cell, 100 KB for the dev data).
TRAINED_ON_DIGITS = 12


def trained_on(train: pd.DataFrame, val: pd.DataFrame) -> dict[str, object]:
    """What a model learnt from, for its sidecar: the training and validation cells' counts,
    one digest of each part (content hash and label, in split order) and the cells' hash
    prefixes, so a later scoring can tell whether a test cell was among them (:func:`overlap`).

    Validation cells count too: they chose the epoch kept (or the SVM's threshold), so a
    test cell that was one is not a fresh cell either. Both frames need ``sha256`` and ``label``.
    """
    cells = sorted({str(h)[:TRAINED_ON_DIGITS] for h in (*train["sha256"], *val["sha256"])})
    return {
        "n_train": int(len(train)),
        "n_val": int(len(val)),
        "train_sha256": sha256_rows(zip(train["sha256"], train["label"], strict=True)),
        "val_sha256": sha256_rows(zip(val["sha256"], val["label"], strict=True)),
        "cells": cells,
    }


def seen_mask(record: object, hashes: pd.Series | list[str]) -> np.ndarray | None:
    """Which of ``hashes`` (content hashes) are among the cells a sidecar's ``trained_on``
    ``record`` holds; None when the model records none (saved before bloodlib kept it)."""
    if not isinstance(record, dict) or not isinstance(record.get("cells"), list):
        return None
    seen = set(record["cells"])
    return np.array([str(h)[:TRAINED_ON_DIGITS] in seen for h in hashes], dtype=bool)


def overlap(record: object, hashes: pd.Series | list[str]) -> int | None:
    """How many of ``hashes`` the model learnt from (:func:`seen_mask`); None: not recorded."""
    mask = seen_mask(record, hashes)
    return None if mask is None else int(mask.sum())
