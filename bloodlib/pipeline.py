"""tf.data input pipeline: JPEG files on disk -> batches of resized RGB tensors.

Images leave the pipeline as float32 in 0..255. Each backbone's own
preprocessing lives inside the model (see ``backbones.preprocessing_layer``),
so a saved model takes raw pixels and the same pipeline serves every backbone.
A ``preprocess`` callable can still be applied here for models without it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import tensorflow as tf

from bloodlib.config import DEFAULT_SEED

AUTOTUNE = tf.data.AUTOTUNE


#: Leading bytes of the formats TensorFlow's ``decode_image`` reads (JPEG, PNG, GIF, BMP).
#: Anything else that the manifest accepts (TIFF, common in microscopy; WebP) is decoded
#: by Pillow, as the manifest did, so every image the scan calls usable also decodes here.
_TF_MAGIC: tuple[bytes, ...] = (b"\xff\xd8\xff", b"\x89PNG", b"GIF8", b"BM")


def _is_tf_native(data: tf.Tensor) -> tf.Tensor:
    return tf.reduce_any([tf.equal(tf.strings.substr(data, 0, len(m)), m) for m in _TF_MAGIC])


def _pillow_rgb(data: bytes, path: bytes) -> np.ndarray:
    """Decode with Pillow to uint8 RGB; errors name the file (TensorFlow's do not)."""
    import io

    from PIL import Image

    name = path.decode("utf-8", "backslashreplace")
    try:
        # Sizes were checked by the scan (manifest.MAX_PIXELS), which every path passes first.
        with Image.open(io.BytesIO(data)) as im:
            return np.asarray(im.convert("RGB"), dtype=np.uint8)
    except Exception as exc:
        raise ValueError(f"cannot decode {name}: {type(exc).__name__}: {exc}") from exc


def _decode(path: tf.Tensor, image_size: tuple[int, int]) -> tf.Tensor:
    data = tf.io.read_file(path)
    # decode_image handles JPEG, PNG, BMP and GIF; expand_animations=False keeps a 3-D shape
    # for GIFs. Other formats (TIFF) go to Pillow; tf.cond runs only the branch taken.
    image = tf.cond(
        _is_tf_native(data),
        lambda: tf.io.decode_image(data, channels=3, expand_animations=False),
        lambda: tf.numpy_function(_pillow_rgb, [data, path], tf.uint8, stateful=False),
    )
    image.set_shape([None, None, 3])
    image = tf.image.resize(image, image_size, method="bilinear", antialias=True)
    # uint8 halves the memory of an optional cache and keeps the cache independent of preprocessing.
    return tf.cast(tf.clip_by_value(tf.round(image), 0.0, 255.0), tf.uint8)


def augment_cell(image: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
    """Augmentation that suits single-cell smears: the class does not depend on orientation.

    Flips and 90-degree rotations are exact (no interpolation); colour and
    brightness jitter are small, because stain colour carries class information
    (eosinophil granules, basophil granules).
    """
    seeds = tf.random.experimental.stateless_split(seed, num=5)
    image = tf.image.stateless_random_flip_left_right(image, seeds[0])
    image = tf.image.stateless_random_flip_up_down(image, seeds[1])
    k = tf.random.stateless_uniform([], seeds[2], minval=0, maxval=4, dtype=tf.int32)
    image = tf.image.rot90(image, k)
    image = tf.image.stateless_random_brightness(image, 0.06 * 255.0, seeds[3])
    image = tf.image.stateless_random_saturation(image, 0.9, 1.1, seeds[4])
    return tf.clip_by_value(image, 0.0, 255.0)


def make_dataset(
    paths: Sequence[str],
    labels: Sequence[int] | np.ndarray | None = None,
    *,
    image_size: int | tuple[int, int] = 224,
    batch_size: int = 32,
    shuffle: bool = False,
    augment: bool = False,
    seed: int = DEFAULT_SEED,
    cache: bool | str = False,
    preprocess: Callable[[tf.Tensor], tf.Tensor] | None = None,
    drop_remainder: bool = False,
    repeat: bool = False,
) -> tf.data.Dataset:
    """Build a streaming dataset of ``(image, label)`` (or ``image`` when ``labels`` is None).

    Order is fixed unless ``shuffle`` is set, so predictions line up with
    ``paths``. ``cache`` keeps decoded, resized uint8 images in memory
    (``True``) or in files under the given path prefix, before augmentation;
    without it memory does not grow with the dataset.
    """
    if isinstance(image_size, int):
        image_size = (image_size, image_size)
    paths = [str(p) for p in paths]
    if not paths:
        raise ValueError("make_dataset needs at least one image path")
    ds = tf.data.Dataset.from_tensor_slices(paths)
    if labels is not None:
        labels = np.asarray(labels, dtype=np.int32)
        if len(labels) != len(paths):
            raise ValueError(f"{len(paths)} paths but {len(labels)} labels")
        ds = tf.data.Dataset.zip((ds, tf.data.Dataset.from_tensor_slices(labels)))
    else:
        ds = ds.map(lambda p: (p, tf.constant(-1, tf.int32)))

    # Without a cache, shuffle file names (cheap) rather than decoded images, so the
    # shuffle buffer does not hold thousands of images.
    if shuffle and not cache:
        ds = ds.shuffle(len(paths), seed=seed, reshuffle_each_iteration=True)
    # Decode in parallel; `deterministic=True` keeps the file order for evaluation.
    ds = ds.map(
        lambda p, y: (_decode(p, image_size), y), num_parallel_calls=AUTOTUNE, deterministic=True
    )
    if cache:
        ds = ds.cache("" if cache is True else str(cache))
        if shuffle:
            ds = ds.shuffle(len(paths), seed=seed, reshuffle_each_iteration=True)
    if repeat:
        ds = ds.repeat()

    if augment:
        # One stateless seed per element, derived from the element counter and the run seed,
        # so an augmented epoch is reproducible.
        counter = tf.data.Dataset.counter()
        ds = tf.data.Dataset.zip((ds, counter)).map(
            lambda xy, i: (
                augment_cell(tf.cast(xy[0], tf.float32), tf.stack([tf.cast(seed, tf.int64), i])),
                xy[1],
            ),
            num_parallel_calls=AUTOTUNE,
        )
    else:
        ds = ds.map(lambda x, y: (tf.cast(x, tf.float32), y), num_parallel_calls=AUTOTUNE)

    if preprocess is not None:
        ds = ds.map(lambda x, y: (preprocess(x), y), num_parallel_calls=AUTOTUNE)
    ds = ds.batch(batch_size, drop_remainder=drop_remainder)
    if labels is None:
        ds = ds.map(lambda x, y: x)
    return ds.prefetch(AUTOTUNE)


def load_images(paths: Sequence[str], image_size: int | tuple[int, int] = 224) -> np.ndarray:
    """Decode a handful of images into one float32 array (for figures and tests)."""
    ds = make_dataset(paths, image_size=image_size, batch_size=len(paths))
    return next(iter(ds)).numpy()
