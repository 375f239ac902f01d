"""Paths and settings shared by every module.

The cache directory is the only place bloodlib writes outside a run folder.
Data folders are treated as read-only: nothing is ever written into them.
"""

from __future__ import annotations

import os
import random
from pathlib import Path

#: The package's own folder (``bloodlib/``): its source decides what a run computes.
PACKAGE_DIR = Path(__file__).resolve().parents[1]
#: Root of the repository when bloodlib is used from a checkout.
REPO_ROOT = PACKAGE_DIR.parent
#: The study's numbered notebooks in a checkout.
NOTEBOOKS_DIR = REPO_ROOT / "notebooks"
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
    import numpy as np  # lazy: the CLI reads this module's paths for --help without NumPy

    random.seed(seed)
    np.random.seed(seed)
    try:
        import keras  # lazy: seeding data-only work needs no TensorFlow

        keras.utils.set_random_seed(seed)
    except ImportError:  # data-only use without TensorFlow
        pass


#: What a model trained with a later seed of a run adds to its name (``<name>_seed43``).
SEED_SUFFIX = "_seed"
#: Ends the name of a run's seed ensemble: ``<backbone>_finetune_ensemble``.
ENSEMBLE_SUFFIX = "_ensemble"
#: Notebook 05's robust network (``<backbone>_robust``): notebook 05 scores it itself.
ROBUST_SUFFIX = "_robust"


def training_seeds(seed: int = DEFAULT_SEED, n_seeds: int = 1) -> list[int]:
    """The training seeds of a run: ``seed, seed + 1, ..., seed + n_seeds - 1``.

    The split stays the one of ``seed``; only training (SVM folds, fine-tuning) repeats.
    """
    if isinstance(n_seeds, bool) or not isinstance(n_seeds, int) or n_seeds < 1:
        raise ValueError(f"n_seeds must be an integer >= 1 (got {n_seeds!r}): use n_seeds=1")
    return list(range(seed, seed + n_seeds))


def seed_model_name(base: str, seed: int, first_seed: int) -> str:
    """The model name for training seed ``seed``: ``base`` for the run's first seed (so every
    reader still finds ``<backbone>_finetune`` / ``<backbone>_svm``), ``base_seed<N>`` else."""
    return base if seed == first_seed else f"{base}{SEED_SUFFIX}{seed}"


def robust_name(backbone: str) -> str:
    """The model name of notebook 05's network trained with other labs' looks (issue 12)."""
    return f"{backbone}{ROBUST_SUFFIX}"


def ensemble_name(base: str) -> str:
    """The model name of the average of ``base``'s training seeds (``bloodlib.models.ensemble``)."""
    return f"{base}{ENSEMBLE_SUFFIX}"


def split_seed_name(name: str) -> tuple[str, int | None]:
    """``(base, seed)`` of a name made by :func:`seed_model_name`; ``(name, None)`` for a first
    seed's model (its name carries no seed)."""
    base, sep, tail = name.rpartition(SEED_SUFFIX)
    if sep and base and tail.isdigit():
        return base, int(tail)
    return name, None
