"""Cached, chunked, resumable feature extraction (with a tiny registered test backbone)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import tiny_models
from PIL import Image

from bloodlib.core import config
from bloodlib.core.hashing import sha256_file
from bloodlib.models import backbones, features

pytestmark = pytest.mark.unit

SIZE = 32
N = 10


TINY = tiny_models.backbone("tiny", tiny_models.mean_colour_builder, "none", feature_dim=3)


@pytest.fixture(autouse=True)
def tiny(monkeypatch):
    monkeypatch.setitem(backbones.REGISTRY, "tiny", TINY)


def colour(i: int) -> np.ndarray:
    return np.array([10 + 20 * i, 120, 200 - 15 * i], np.float32)


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> tuple[list[str], list[str]]:
    folder = tmp_path_factory.mktemp("features_images")
    paths = []
    for i in range(N):
        path = folder / f"cell_{i:02d}.png"
        Image.new("RGB", (40, 36), tuple(int(v) for v in colour(i))).save(path)
        paths.append(str(path))
    return paths, [sha256_file(p) for p in paths]


class Counting:
    """Stands in for the built model: counts builds and predict calls, can fail on call k."""

    def __init__(self, monkeypatch, fail_on: int | None = None):
        self.builds = 0
        self.calls = 0
        self.fail_on = fail_on
        real = backbones.build_feature_extractor

        def build(*args, **kwargs):
            self.builds += 1
            model = real(*args, **kwargs)
            outer = self

            class Proxy:
                def predict(self, ds, verbose=0):
                    outer.calls += 1
                    if outer.calls == outer.fail_on:
                        raise RuntimeError("killed while extracting")
                    return model.predict(ds, verbose=verbose)

            return Proxy()

        monkeypatch.setattr(backbones, "build_feature_extractor", build)


def run(paths, hashes, root: Path, **kwargs):
    kwargs.setdefault("image_size", SIZE)
    kwargs.setdefault("weights", None)
    return features.extract(paths, hashes, "tiny", progress=False, cache_root=root, **kwargs)


def test_features_aligned_with_rows_then_cached(images, tmp_path, monkeypatch):
    paths, hashes = images
    fs = run(paths, hashes, tmp_path)
    assert not fs.from_cache
    assert fs.features.shape == (N, 3) and fs.features.dtype == np.float32
    np.testing.assert_allclose(fs.features, np.stack([colour(i) for i in range(N)]), atol=0.5)
    assert fs.key == features.cache_key(hashes, "tiny", SIZE, None)
    assert fs.path == tmp_path / "tiny" / f"{fs.key}.npy" and fs.path.is_file()

    counting = Counting(monkeypatch)
    again = run(paths, hashes, tmp_path)
    assert again.from_cache
    assert again.key == fs.key
    np.testing.assert_array_equal(again.features, fs.features)
    assert counting.builds == 0  # a cache hit builds no network


def test_rows_follow_input_order(images, tmp_path):
    paths, hashes = images
    order = [3, 0, 9, 1]
    fs = run([paths[i] for i in order], [hashes[i] for i in order], tmp_path)
    np.testing.assert_allclose(fs.features, np.stack([colour(i) for i in order]), atol=0.5)


def test_cache_follows_content_not_location(images, tmp_path):
    paths, hashes = images
    moved = tmp_path / "moved"
    moved.mkdir()
    new_paths = [shutil.copy(p, moved / Path(p).name) for p in paths]
    first = run(paths, hashes, tmp_path / "cache")
    second = run([str(p) for p in new_paths], hashes, tmp_path / "cache")
    assert second.from_cache and second.key == first.key


def test_key_changes_with_every_input(images, tmp_path):
    _, hashes = images
    weights_a, weights_b = tmp_path / "a.weights.h5", tmp_path / "b.weights.h5"
    weights_a.write_bytes(b"a")
    weights_b.write_bytes(b"b")
    base = features.cache_key(hashes, "tiny", SIZE, None)
    assert base == features.cache_key(list(hashes), "tiny", SIZE, None)  # deterministic
    changed = [*hashes[:4], "0" * 64, *hashes[5:]]
    keys = {
        base,
        features.cache_key(changed, "tiny", SIZE, None),
        features.cache_key(hashes[::-1], "tiny", SIZE, None),  # row order matters
        features.cache_key(hashes[:-1], "tiny", SIZE, None),
        features.cache_key(hashes, "tiny", 48, None),
        features.cache_key(hashes, "tiny", SIZE, "imagenet"),
        features.cache_key(hashes, "tiny", SIZE, weights_a),
        features.cache_key(hashes, "tiny", SIZE, weights_b),
        features.cache_key(hashes, "vgg16", SIZE, None),
        features.cache_key(hashes, "tiny", SIZE, None, crop=0.5),
    }
    assert len(keys) == 10
    # The whole frame keeps the key it had before crops existed: caches stay valid.
    assert features.cache_key(hashes, "tiny", SIZE, None, crop=1.0) == base


def test_changed_hash_or_size_misses_the_cache(images, tmp_path):
    paths, hashes = images
    first = run(paths, hashes, tmp_path)
    changed = run(paths, [*hashes[:-1], "f" * 64], tmp_path)
    assert not changed.from_cache and changed.key != first.key
    resized = run(paths, hashes, tmp_path, image_size=48)
    assert not resized.from_cache and resized.key != first.key
    assert len(list((tmp_path / "tiny").glob("*.npy"))) == 3


def test_weights_file_changes_the_key_and_the_features(images, tmp_path):
    paths, hashes = images
    model = tiny_models.mean_colour_builder((SIZE, SIZE, 3), None)
    model.get_layer("block0_conv").set_weights(
        [2 * np.eye(3, dtype=np.float32).reshape(1, 1, 3, 3), np.zeros(3, np.float32)]
    )
    weights = tmp_path / "double.weights.h5"
    model.save_weights(weights)
    plain = run(paths, hashes, tmp_path / "cache")
    doubled = run(paths, hashes, tmp_path / "cache", weights=weights)
    assert not doubled.from_cache and doubled.key != plain.key
    np.testing.assert_allclose(doubled.features, 2 * plain.features, rtol=1e-5)


def test_interrupted_extraction_resumes(images, tmp_path, monkeypatch):
    paths, hashes = images
    monkeypatch.setattr(features, "CHUNK", 4)  # 10 images: chunks of 4, 4, 2
    root = tmp_path / "cache"
    key = features.cache_key(hashes, "tiny", SIZE, None)
    final = root / "tiny" / f"{key}.npy"
    parts = root / "tiny" / f"{key}.parts{features.CHUNK}"

    killed = Counting(monkeypatch, fail_on=2)
    with pytest.raises(RuntimeError, match="killed"):
        run(paths, hashes, root)
    assert killed.calls == 2
    assert not final.exists()
    assert sorted(os.listdir(parts)) == ["00000.npy"]  # the finished chunk, no temp files
    assert np.load(parts / "00000.npy").shape == (4, 3)

    resumed = Counting(monkeypatch)
    fs = run(paths, hashes, root)
    assert resumed.calls == 2  # chunks 1 and 2 only
    assert not fs.from_cache and final.is_file()
    assert not parts.exists()
    np.testing.assert_allclose(fs.features, np.stack([colour(i) for i in range(N)]), atol=0.5)

    fresh = Counting(monkeypatch)
    whole = run(paths, hashes, tmp_path / "fresh")
    assert fresh.calls == 3
    np.testing.assert_array_equal(fs.features, whole.features)


def test_writes_are_atomic(images, tmp_path, monkeypatch):
    paths, hashes = images
    monkeypatch.setattr(features, "CHUNK", 3)
    fs = run(paths, hashes, tmp_path)
    assert sorted(os.listdir(tmp_path)) == ["tiny"]
    assert sorted(os.listdir(tmp_path / "tiny")) == [f"{fs.key}.npy"]  # no temp files, no parts
    np.testing.assert_array_equal(np.load(fs.path), fs.features)


def test_default_cache_root_is_under_bloodlib_cache(images):
    paths, hashes = images
    fs = features.extract(
        paths[:2], hashes[:2], "tiny", image_size=SIZE, weights=None, progress=False
    )
    assert fs.path.parent == config.cache_dir() / "features" / "tiny"
    assert os.environ["BLOODLIB_CACHE"] in str(fs.path)


def test_native_size_by_default(images, tmp_path):
    paths, hashes = images
    fs = features.extract(
        paths[:2], hashes[:2], "tiny", weights=None, progress=False, cache_root=tmp_path
    )
    assert fs.key == features.cache_key(hashes[:2], "tiny", TINY.input_size, None)


def test_mismatched_lengths_raise(images, tmp_path):
    paths, hashes = images
    with pytest.raises(ValueError, match="same length"):
        run(paths, hashes[:-1], tmp_path)
