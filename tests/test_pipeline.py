"""The tf.data input pipeline: shapes, order, batching, shuffling, augmentation, caching."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bloodlib.data.pipeline import load_images, make_dataset

pytestmark = pytest.mark.unit

SIZE = 32
N = 10


def colour(i: int) -> tuple[int, int, int]:
    """A flat colour that encodes the image index (red steps of 20; green, blue fixed)."""
    return (10 + 20 * i, 120, 200 - 15 * i)


def write_images(folder: Path, n: int = N, fmt: str = "JPEG", size=(40, 44)) -> list[str]:
    """``n`` flat-colour images whose mean colour says which one they are."""
    folder.mkdir(parents=True, exist_ok=True)
    ext = {"JPEG": "jpg", "PNG": "png"}[fmt]
    paths = []
    for i in range(n):
        path = folder / f"img_{i:02d}.{ext}"
        Image.new("RGB", size, colour(i)).save(path, fmt, quality=95)
        paths.append(str(path))
    return paths


def index_of(image: np.ndarray) -> int:
    """Which of ``colour(0..N-1)`` an image is closest to."""
    mean = image.reshape(-1, 3).mean(0)
    dist = [np.abs(mean - np.array(colour(i))).sum() for i in range(N)]
    return int(np.argmin(dist))


def collect(ds) -> tuple[np.ndarray, np.ndarray]:
    xs, ys = [], []
    for x, y in ds:
        xs.append(x.numpy())
        ys.append(y.numpy())
    return np.concatenate(xs), np.concatenate(ys)


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> list[str]:
    return write_images(tmp_path_factory.mktemp("pipeline") / "jpg")


def test_shapes_dtypes_and_range(images):
    ds = make_dataset(images, list(range(N)), image_size=SIZE, batch_size=4)
    x, y = next(iter(ds))
    assert x.shape == (4, SIZE, SIZE, 3)
    assert x.dtype.name == "float32"
    assert y.dtype.name == "int32"
    x = x.numpy()
    assert 0.0 <= x.min() and x.max() <= 255.0
    assert x.max() > 1.5  # raw pixels, not rescaled to 0..1


def test_rectangular_image_size(images):
    x, _ = next(iter(make_dataset(images, [0] * N, image_size=(24, 40), batch_size=2)))
    assert x.shape == (2, 24, 40, 3)


def test_labels_aligned_and_in_order_without_shuffle(images):
    labels = np.arange(N)[::-1] * 3  # any labels: they must follow their images
    x, y = collect(make_dataset(images, labels, image_size=SIZE, batch_size=3))
    assert [index_of(im) for im in x] == list(range(N))
    np.testing.assert_array_equal(y, labels)
    assert y.dtype == np.int32


def test_images_only_without_labels(images):
    ds = make_dataset(images, image_size=SIZE, batch_size=4)
    batches = [b.numpy() for b in ds]
    assert all(b.ndim == 4 for b in batches)
    assert [index_of(im) for im in np.concatenate(batches)] == list(range(N))


def test_batch_sizes_with_and_without_remainder(images):
    ds = make_dataset(images, list(range(N)), image_size=SIZE, batch_size=4)
    assert [int(x.shape[0]) for x, _ in ds] == [4, 4, 2]
    ds = make_dataset(images, list(range(N)), image_size=SIZE, batch_size=4, drop_remainder=True)
    assert [int(x.shape[0]) for x, _ in ds] == [4, 4]
    ds = make_dataset(images, list(range(N)), image_size=SIZE, batch_size=5)
    assert [int(x.shape[0]) for x, _ in ds] == [5, 5]


def test_repeat_cycles_through_the_data(images):
    ds = make_dataset(images, list(range(N)), image_size=SIZE, batch_size=4, repeat=True)
    ys = np.concatenate([y.numpy() for _, y in ds.take(5)])
    assert len(ys) == 20  # full batches across the epoch boundary
    np.testing.assert_array_equal(ys, np.concatenate([np.arange(N), np.arange(N)]))


@pytest.mark.parametrize("cache", [False, True])
def test_shuffle_deterministic_per_seed(images, cache):
    def order(seed):
        ds = make_dataset(
            images, list(range(N)), image_size=SIZE, batch_size=N, shuffle=True,
            seed=seed, cache=cache,
        )  # fmt: skip
        x, y = collect(ds)
        assert [index_of(im) for im in x] == list(y)  # images and labels move together
        return list(y)

    a, b, c = order(1), order(1), order(2)
    assert sorted(a) == list(range(N))
    assert a == b
    assert a != c
    assert a != list(range(N))


def test_shuffle_reshuffles_each_epoch(images):
    ds = make_dataset(images, list(range(N)), image_size=SIZE, batch_size=N, shuffle=True, seed=3)
    first, second = (collect(ds)[1].tolist() for _ in range(2))
    assert sorted(first) == sorted(second) == list(range(N))
    assert first != second


def test_augment_keeps_shape_range_and_is_deterministic(tmp_path):
    # A non-flat image, so flips and rotations are visible.
    rng = np.random.default_rng(0)
    paths = []
    for i in range(6):
        arr = rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)
        path = tmp_path / f"noise_{i}.png"
        Image.fromarray(arr).save(path)
        paths.append(str(path))
    labels = list(range(6))

    def run(seed, augment=True):
        return collect(
            make_dataset(paths, labels, image_size=SIZE, batch_size=4, augment=augment, seed=seed)
        )

    x1, y1 = run(7)
    x2, y2 = run(7)
    x3, _ = run(8)
    plain, _ = run(7, augment=False)
    assert x1.shape == (6, SIZE, SIZE, 3) and x1.dtype == np.float32
    assert 0.0 <= x1.min() and x1.max() <= 255.0
    np.testing.assert_array_equal(x1, x2)
    np.testing.assert_array_equal(y1, labels)
    assert not np.array_equal(x1, x3)
    assert not np.array_equal(x1, plain)


def test_png_input_decodes(tmp_path):
    paths = write_images(tmp_path / "png", n=3, fmt="PNG")
    x, y = collect(make_dataset(paths, [0, 1, 2], image_size=SIZE, batch_size=2))
    assert x.shape == (3, SIZE, SIZE, 3)
    # PNG is lossless and the images are flat: resizing keeps the exact colour.
    for i, im in enumerate(x):
        np.testing.assert_allclose(im.reshape(-1, 3).mean(0), colour(i), atol=0.5)


def test_every_format_the_scan_accepts_decodes(tmp_path):
    """TIFF (common in microscopy) and WebP are not TensorFlow's: Pillow decodes them, in order."""
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (40, 44, 3), dtype=np.uint8)
    paths = []
    for i, (fmt, ext) in enumerate(
        [("TIFF", "tif"), ("PNG", "png"), ("BMP", "bmp"), ("TIFF", "tiff"), ("WEBP", "webp")]
    ):
        path = tmp_path / f"img_{i}.{ext}"
        Image.fromarray(pixels).save(path, fmt, **({"lossless": True} if fmt == "WEBP" else {}))
        paths.append(str(path))
    x = load_images(paths, image_size=(40, 44))
    assert x.shape == (5, 40, 44, 3)
    for image in x:  # all lossless at the original size: the very same pixels
        np.testing.assert_array_equal(image, pixels)


def test_an_undecodable_file_is_named_in_the_error(tmp_path):
    path = tmp_path / "broken.tif"
    path.write_bytes(b"II*\x00" + b"\x00" * 40)  # a TIFF header and nothing behind it
    with pytest.raises(Exception, match="broken.tif"):
        load_images([str(path)], SIZE)


def test_grayscale_input_becomes_rgb(tmp_path):
    path = tmp_path / "grey.jpg"
    Image.new("L", (40, 40), 90).save(path)
    x = load_images([str(path)], SIZE)
    assert x.shape == (1, SIZE, SIZE, 3)
    np.testing.assert_allclose(x.reshape(-1, 3).mean(0), [90, 90, 90], atol=2)


def test_cache_gives_identical_epochs_and_skips_the_files(tmp_path):
    paths = write_images(tmp_path / "cached", n=6)
    ds = make_dataset(paths, list(range(6)), image_size=SIZE, batch_size=4, cache=True)
    x1, y1 = collect(ds)
    for p in paths:  # the second epoch must come from the cache, not the files
        Path(p).unlink()
    x2, y2 = collect(ds)
    np.testing.assert_array_equal(x1, x2)
    np.testing.assert_array_equal(y1, y2)


def test_cache_to_files(tmp_path):
    paths = write_images(tmp_path / "filecache", n=4)
    prefix = tmp_path / "tfcache" / "train"
    prefix.parent.mkdir()
    ds = make_dataset(paths, list(range(4)), image_size=SIZE, batch_size=4, cache=str(prefix))
    x1, _ = collect(ds)
    assert any(prefix.parent.iterdir())
    x2, _ = collect(ds)
    np.testing.assert_array_equal(x1, x2)


def test_preprocess_callable_applied(images):
    ds = make_dataset(
        images[:2], [0, 1], image_size=SIZE, batch_size=2, preprocess=lambda x: x / 255.0
    )
    x, _ = next(iter(ds))
    assert float(x.numpy().max()) <= 1.0


def test_mismatched_paths_and_labels_raise(images):
    with pytest.raises(ValueError, match="10 paths but 9 labels"):
        make_dataset(images, list(range(N - 1)), image_size=SIZE)


def test_no_paths_raises():
    with pytest.raises(ValueError, match="at least one"):
        make_dataset([], image_size=SIZE)


def test_load_images(images):
    x = load_images(images[:3], SIZE)
    assert isinstance(x, np.ndarray)
    assert x.shape == (3, SIZE, SIZE, 3) and x.dtype == np.float32
    assert [index_of(im) for im in x] == [0, 1, 2]


@pytest.mark.parametrize("name", ["augment_other_lab", "restain"])
def test_other_lab_augmentation_is_seeded_bounded_and_changes_the_cell(name):
    """Same seed, same picture; another seed, another; 0..255, same shape (not square)."""
    import tensorflow as tf

    from bloodlib.data import pipeline

    augment = getattr(pipeline, name)
    rng = np.random.default_rng(0)
    image = tf.constant(rng.uniform(0, 255, (64, 48, 3)), tf.float32)
    a = augment(image, tf.constant([1, 2], tf.int64)).numpy()
    b = augment(image, tf.constant([1, 2], tf.int64)).numpy()
    c = augment(image, tf.constant([1, 3], tf.int64)).numpy()
    assert a.shape == (64, 48, 3)
    assert 0.0 <= a.min() and a.max() <= 255.0
    np.testing.assert_array_equal(a, b)
    assert np.abs(a - c).mean() > 1.0
    assert np.abs(a - image.numpy()).mean() > 1.0


@pytest.mark.parametrize("option", ["augment_domain", "augment_stain"])
def test_other_lab_augmentation_needs_augment(tmp_path, option):
    from bloodlib.data.pipeline import make_dataset

    path = tmp_path / "a.jpg"
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(path)
    with pytest.raises(ValueError, match="augment=True"):
        make_dataset([str(path)], **{option: True})


def _dyed(amounts: np.ndarray, dyes: np.ndarray, background: np.ndarray) -> np.ndarray:
    """RGB 0..255 of pixels holding ``amounts`` (n, 2) of two dyes, by Beer-Lambert."""
    return (background + 1.0) * np.exp(-(amounts @ dyes)) - 1.0


def test_restain_moves_each_dye_along_itself_and_the_slide_to_a_new_light(monkeypatch):
    """With the dyes' directions held, a pixel of one dye stays that dye, in a new amount;
    the empty slide takes the drawn light, and every pixel's light scales with it."""
    import tensorflow as tf

    from bloodlib.data import pipeline
    from bloodlib.data.stain import PBC_STAINS

    dyes = np.asarray(PBC_STAINS.stains)
    bg = np.asarray(PBC_STAINS.background)
    amounts = np.array([[0.0, 0.0], [0.8, 0.0], [0.0, 0.8], [0.5, 0.5]])
    image = tf.constant(_dyed(amounts, dyes, bg).reshape(1, 4, 3), tf.float32)
    monkeypatch.setattr(pipeline, "STAIN_DIRECTION", 0.0)
    monkeypatch.setattr(pipeline, "STAIN_AMOUNT", (1.5, 1.5 + 1e-6))
    out = pipeline.restain(image, tf.constant([4, 2], tf.int64)).numpy().reshape(4, 3)
    light = out[0]  # the empty slide: the drawn background, the same in every pixel
    assert all(pipeline.STAIN_BACKGROUND[0] <= v <= pipeline.STAIN_BACKGROUND[1] for v in light)
    np.testing.assert_allclose(out, _dyed(amounts * 1.5, dyes, light), atol=0.05)
    # Unscaled, under a grey light: the same dyes in the same amounts, only the light changed.
    monkeypatch.setattr(pipeline, "STAIN_AMOUNT", (1.0, 1.0 + 1e-6))
    monkeypatch.setattr(pipeline, "STAIN_BACKGROUND", (bg.min(), bg.min() + 1e-6))
    same = pipeline.restain(image, tf.constant([4, 2], tf.int64)).numpy().reshape(4, 3)
    np.testing.assert_allclose(same, _dyed(amounts, dyes, np.full(3, bg.min())), atol=0.05)
