"""Cached ImageNet feature extraction.

Features are keyed by everything that changes them: the images' content
hashes, the backbone, its weights, the image size, the preprocessing and this
module's version. A re-run with the same key loads from disk; any change
misses the cache. Work is saved in chunks, so an interrupted extraction
resumes where it stopped, and the final file appears atomically only when
complete.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bloodlib.core import config
from bloodlib.core.hashing import sha256_text
from bloodlib.core.io import write_with
from bloodlib.core.progress import tqdm
from bloodlib.models import backbones

#: Bump when the extraction changes in a way the key does not capture.
FEATURES_VERSION = 1
CHUNK = 512


@dataclass
class FeatureSet:
    features: np.ndarray  # (n, d) float32, aligned with the input rows
    key: str
    path: Path
    from_cache: bool


def cache_key(
    hashes: Sequence[str],
    backbone: str,
    image_size: int,
    weights: str | os.PathLike | None = "imagenet",
    crop: float = 1.0,
) -> str:
    bb = backbones.get(backbone)
    spec = {
        "version": FEATURES_VERSION,
        "backbone": backbone,
        "weights": backbones.weights_id(bb, weights),
        "image_size": int(image_size),
        "preprocessing": bb.preprocessing,
        "images": sha256_text("\n".join(hashes)),
    }
    if crop != 1.0:  # only when cropping: the keys of whole-frame features stay as they were
        spec["crop"] = float(crop)
    return sha256_text(json.dumps(spec, sort_keys=True))[:24]


def extract(
    paths: Sequence[str],
    hashes: Sequence[str],
    backbone: str,
    *,
    image_size: int | None = None,
    weights: str | os.PathLike | None = "imagenet",
    batch_size: int = 32,
    progress: bool = True,
    cache_root: Path | None = None,
    model=None,
    crop: float = 1.0,
) -> FeatureSet:
    """Features for ``paths`` (row-aligned), from the cache when possible.

    ``hashes`` are the files' content hashes (the manifest's ``sha256``); they
    key the cache, so renaming or moving the data keeps the cache valid while
    any change of content invalidates it. ``model``: an already built extractor holding
    exactly these ``weights`` and ``crop`` (saves building a second one); by default one is
    built. ``crop``: the centre fraction of the frame the network sees
    (``backbones.build_feature_extractor``).
    """
    if len(paths) != len(hashes):
        raise ValueError("paths and hashes must have the same length")
    bb = backbones.get(backbone)
    size = int(image_size or bb.input_size)
    key = cache_key(hashes, backbone, size, weights, crop)
    root = (cache_root or config.cache_dir() / "features") / backbone
    final = root / f"{key}.npy"
    if final.is_file():
        return FeatureSet(np.load(final), key, final, True)

    from bloodlib.data.pipeline import make_dataset  # TensorFlow only when there is work to do

    if model is None:
        model = backbones.build_feature_extractor(backbone, size, weights, crop)
    parts = root / f"{key}.parts{CHUNK}"
    parts.mkdir(parents=True, exist_ok=True)
    n = len(paths)
    n_chunks = (n + CHUNK - 1) // CHUNK
    bar = tqdm(total=n, desc=f"features {backbone}", unit="img", disable=not progress)
    for c in range(n_chunks):
        lo, hi = c * CHUNK, min(n, (c + 1) * CHUNK)
        part = parts / f"{c:05d}.npy"
        # Resumed: keep a chunk finished by an earlier run, if it covers exactly these rows
        # (a different CHUNK size would misalign them).
        if part.is_file() and len(np.load(part, mmap_mode="r")) == hi - lo:
            bar.update(hi - lo)
            continue
        ds = make_dataset(paths[lo:hi], image_size=size, batch_size=batch_size)
        chunk = np.asarray(model.predict(ds, verbose=0), dtype=np.float32)
        write_with(part, lambda p, a=chunk: np.save(p, a), suffix=".npy")
        bar.update(hi - lo)
    bar.close()
    feats = np.concatenate([np.load(parts / f"{c:05d}.npy") for c in range(n_chunks)])
    write_with(final, lambda p: np.save(p, feats), suffix=".npy")
    shutil.rmtree(parts, ignore_errors=True)
    return FeatureSet(feats, key, final, False)
