"""Paths and settings shared by every module.

The cache directory is the only place bloodlib writes outside a run folder.
Data folders are treated as read-only: nothing is ever written into them.
"""

from __future__ import annotations

import os
import random
from pathlib import Path

import numpy as np

#: Root of the repository when bloodlib is used from a checkout.
REPO_ROOT = Path(__file__).resolve().parent.parent
#: The embedded sample shipped in the repository.
SAMPLE_DIR = REPO_ROOT / "data" / "sample"
DEFAULT_SEED = 42


def cache_dir() -> Path:
    """Where manifests, features, converted weights and downloads are cached.

    ``BLOODLIB_CACHE`` moves it; the default is ``$XDG_CACHE_HOME/bloodlib``
    (``~/.cache/bloodlib``).
    """
    env = os.environ.get("BLOODLIB_CACHE")
    if env:
        root = Path(env).expanduser()
    else:
        base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
        root = Path(base) / "bloodlib"
    root.mkdir(parents=True, exist_ok=True)
    return root


def set_seeds(seed: int = DEFAULT_SEED) -> None:
    """Seed Python, NumPy and (when imported) TensorFlow/Keras."""
    os.environ.setdefault("PYTHONHASHSEED", str(seed))
    random.seed(seed)
    np.random.seed(seed)
    try:
        import keras

        keras.utils.set_random_seed(seed)
    except ImportError:  # data-only use without TensorFlow
        pass
