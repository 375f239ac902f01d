"""Labels and probabilities as the metrics want them, and bootstrap resamples of a test set.

Every metric of :mod:`bloodlib.evaluate` takes plain NumPy arrays: labels as class indices,
class probabilities as an ``(n, k)`` array. The checks here turn a mistake (logits passed as
probabilities, labels off by one class) into a clear error instead of a silent wrong number.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np

# Bootstrap index matrices are drawn in chunks of at most this many entries so that
# n_boot x n stays within a few hundred MB even for large test sets.
_BOOT_CHUNK_ENTRIES = 20_000_000


def as_labels(y_true: Any, k: int | None = None) -> np.ndarray:
    y = np.asarray(y_true)
    if y.ndim != 1:
        raise ValueError(f"y_true must be 1-D class indices, got shape {y.shape}")
    if y.size and not np.issubdtype(y.dtype, np.integer):
        if np.issubdtype(y.dtype, np.floating) and np.all(np.mod(y, 1) == 0):
            y = y.astype(np.int64)
        else:
            raise ValueError("y_true must hold integer class indices")
    y = y.astype(np.int64, copy=False)
    if k is not None and y.size and (y.min() < 0 or y.max() >= k):
        raise ValueError(f"y_true holds indices outside [0, {k})")
    return y


def as_proba(proba: Any, n: int | None = None) -> np.ndarray:
    p = np.asarray(proba, dtype=np.float64)
    if p.ndim == 1:  # a single-class model may hand back a flat vector
        p = p[:, None]
    if p.ndim != 2:
        raise ValueError(f"proba must be (n, k), got shape {p.shape}")
    if n is not None and p.shape[0] != n:
        raise ValueError(f"proba has {p.shape[0]} rows but y_true has {n}")
    if not np.isfinite(p).all():
        raise ValueError("proba holds NaN or infinite values")
    if p.size and (p.min() < -1e-6 or p.max() > 1 + 1e-6):
        # Logits passed where probabilities belong: a silent wrong ECE/NLL otherwise.
        raise ValueError("proba has values outside [0, 1]; pass softmax(logits) instead of logits")
    return p


def boot_indices(n: int, n_boot: int, seed: int) -> Iterator[np.ndarray]:
    """Yield (b, n) index chunks that together make ``n_boot`` bootstrap resamples."""
    rng = np.random.default_rng(seed)
    per_chunk = max(1, _BOOT_CHUNK_ENTRIES // max(n, 1))
    done = 0
    while done < n_boot:
        b = min(per_chunk, n_boot - done)
        yield rng.integers(0, n, size=(b, n))
        done += b
