"""Networks that ship with bloodlib, by name: ``classify pbc-lite0 FOLDER`` needs no training run.

A shipped network is an ordinary saved model (``.keras`` and its bound sidecar) in
:data:`SHIPPED_DIR`, made by ``python -m bloodlib pretrain`` (``bloodlib.study.pretrain``);
its sidecar's ``published`` block says how, on what, and what it scored.
"""

from __future__ import annotations

import os
from pathlib import Path

#: Where the shipped networks live inside the package.
SHIPPED_DIR = Path(__file__).resolve().parent / "shipped"

#: The shipped networks: name -> what it is.
NAMES: dict[str, str] = {
    "pbc-lite0": "EfficientNet-Lite0 fine-tuned on the PBC dev data with the full recipe",
}


def resolve(spec: str | os.PathLike) -> Path:
    """A model path: ``spec`` itself when it names a file, else the shipped network of that
    name (a file named like one in the working directory wins: it is what the user named)."""
    path = Path(spec)
    if path.exists() or str(spec) not in NAMES:
        return path
    shipped = SHIPPED_DIR / f"{spec}.keras"
    if not shipped.is_file():
        raise FileNotFoundError(
            f"the shipped network {spec!r} is not in this installation ({shipped}); "
            "reinstall bloodlib, or make it with python -m bloodlib pretrain --data PBC_FOLDER"
        )
    return shipped
