"""tf.data input pipeline: JPEG files on disk -> batches of resized RGB tensors.

Images leave the pipeline as float32 in 0..255. Each backbone's own
preprocessing lives inside the model (see ``backbones.preprocessing_layer``),
so a saved model takes raw pixels and the same pipeline serves every backbone.
A ``preprocess`` callable can still be applied here for models without it.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Sequence

import numpy as np
import tensorflow as tf
from PIL import Image

from bloodlib.core.config import DEFAULT_SEED
from bloodlib.data.stain import PBC_STAINS

AUTOTUNE = tf.data.AUTOTUNE


#: Leading bytes of the formats TensorFlow's ``decode_image`` decodes with Pillow's colours
#: (JPEG, PNG, GIF). Anything else the scan accepts is decoded by Pillow, as the scan did, so
#: every image the scan calls usable also decodes here, with the colours the scan saw: TIFF
#: and WebP, which TensorFlow does not read, and BMP, which it reads wrongly (an 8-bit palette
#: BMP came out as grey palette indices; an RLE-compressed one raised inside tf.data).
_TF_MAGIC: tuple[bytes, ...] = (b"\xff\xd8\xff", b"\x89PNG", b"GIF8")


def _is_tf_native(data: tf.Tensor) -> tf.Tensor:
    return tf.reduce_any([tf.equal(tf.strings.substr(data, 0, len(m)), m) for m in _TF_MAGIC])


def _pillow_rgb(data: bytes, path: bytes) -> np.ndarray:
    """Decode with Pillow to uint8 RGB; errors name the file (TensorFlow's do not)."""

    name = path.decode("utf-8", "backslashreplace")
    try:
        # Sizes were checked by the scan (files.MAX_PIXELS), which every path passes first.
        with Image.open(io.BytesIO(data)) as im:
            return np.asarray(im.convert("RGB"), dtype=np.uint8)
    except Exception as exc:
        raise ValueError(f"cannot decode {name}: {type(exc).__name__}: {exc}") from exc


def _decode(path: tf.Tensor, image_size: tuple[int, int]) -> tf.Tensor:
    data = tf.io.read_file(path)
    # decode_image handles JPEG, PNG and GIF; expand_animations=False keeps a 3-D shape for
    # GIFs. Other formats (BMP, TIFF, WebP) go to Pillow; tf.cond runs only the branch taken.
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


#: Ranges of :func:`augment_other_lab`, each wide enough to cover what other labs' cells
#: differ by (issue 12: backgrounds from yellow to pale blue, the cell 1.5-3x larger in the
#: frame, 120-300 px cameras, some blur) while the class stays readable.
DOMAIN_ZOOM = (1.0, 2.2)  # zoom in: the central 1/2.2 .. 1 of the frame, resized back
DOMAIN_CHANNEL_GAIN = 0.15  # per-channel gain in 1 +- 0.15: white balance, stain hue
DOMAIN_HUE = 0.04  # hue shift, fraction of the colour circle
DOMAIN_SATURATION = (0.6, 1.4)
DOMAIN_CONTRAST = (0.7, 1.3)
DOMAIN_GAMMA = (0.7, 1.4)  # camera response curve
DOMAIN_LOW_RES = (0.35, 1.0)  # resolution of a smaller or blurrier camera, resized back
DOMAIN_NOISE = 6.0  # Gaussian noise, standard deviation up to this (0..255 scale)


def augment_other_lab(image: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
    """Stain, camera and magnification shifts, so a model learns what other labs' cells share.

    On top of :func:`augment_cell`: a random zoom into the centre (other microscopes show
    the cell larger), per-channel gain, hue, saturation, contrast and gamma (stain and white
    balance), a lower resolution (smaller cameras, defocus) and sensor noise. Float 0..255
    in and out, same shape.
    """
    s = tf.random.experimental.stateless_split(seed, num=10)

    def u(i, lo, hi, shape=()):
        return tf.random.stateless_uniform(shape, s[i], lo, hi)

    shape = tf.shape(image)
    h, w = shape[0], shape[1]
    size = tf.stack([h, w])
    # Zoom in: crop the centre (jittered a little) and resize back.
    frac = 1.0 / u(0, *DOMAIN_ZOOM)
    ch = tf.cast(tf.cast(h, tf.float32) * frac, tf.int32)
    cw = tf.cast(tf.cast(w, tf.float32) * frac, tf.int32)
    # PBC cells sit in the centre: the crop's centre moves by at most a quarter of the margin.
    top = tf.cast(u(1, 0.375, 0.625) * tf.cast(h - ch, tf.float32), tf.int32)
    left = tf.cast(u(2, 0.375, 0.625) * tf.cast(w - cw, tf.float32), tf.int32)
    image = tf.image.resize(image[top : top + ch, left : left + cw], size, antialias=True)
    # Lower resolution, then back: blur and lost detail of a smaller camera.
    res = u(3, *DOMAIN_LOW_RES)
    small = tf.maximum(tf.cast(tf.cast(size, tf.float32) * res, tf.int32), 16)
    image = tf.image.resize(tf.image.resize(image, small, antialias=True), size)
    # Colour: camera curve, white balance, stain hue and strength.
    x = tf.clip_by_value(image / 255.0, 0.0, 1.0)
    x = x ** u(4, *DOMAIN_GAMMA)
    x = x * u(5, 1.0 - DOMAIN_CHANNEL_GAIN, 1.0 + DOMAIN_CHANNEL_GAIN, (1, 1, 3))
    x = tf.image.adjust_hue(tf.clip_by_value(x, 0.0, 1.0), u(6, -DOMAIN_HUE, DOMAIN_HUE))
    x = tf.image.adjust_saturation(x, u(7, *DOMAIN_SATURATION))
    x = tf.image.adjust_contrast(x, u(8, *DOMAIN_CONTRAST))
    x = x * 255.0
    x = x + tf.random.stateless_normal(shape, s[9]) * u(9, 0.0, DOMAIN_NOISE)
    return tf.clip_by_value(x, 0.0, 255.0)


#: Ranges of :func:`restain`, from what separates another lab's dyes from PBC's
#: (``stain.macenko_stains`` on tecom's cells: both dye directions 20-26 degrees away, about
#: twice the amount, a slide of (255, 255, 175) against PBC's (246, 222, 195)).
STAIN_DIRECTION = 0.25  # each dye's OD vector + U(-0.25, 0.25) per channel: up to ~25 degrees
STAIN_AMOUNT = (0.6, 2.0)  # each dye's amount times this factor (log-uniform)
STAIN_BACKGROUND = (170.0, 255.0)  # the slide's light, per channel

# PBC's two dyes and the residual direction neither explains: optical density = amounts @ basis.
_PBC_DYES = np.asarray(PBC_STAINS.stains, np.float32)
_PBC_RESIDUAL = np.cross(_PBC_DYES[0], _PBC_DYES[1])[None]
_PBC_RESIDUAL /= np.linalg.norm(_PBC_RESIDUAL)
_PBC_UNMIX = np.linalg.inv(np.vstack([_PBC_DYES, _PBC_RESIDUAL])).astype(np.float32)


def restain(image: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
    """Re-stain a PBC cell as another lab might: other dyes, other amounts, another slide.

    Beer-Lambert, as in Macenko's normalisation (``stain.macenko``) but run backwards: each
    pixel's optical density against PBC's slide is unmixed into PBC's two dyes
    (``stain.PBC_STAINS``) and a residual, and re-mixed with randomly turned dye vectors,
    scaled amounts and a random slide colour. Unlike per-channel gains or a hue shift, it
    moves the nucleus's and the granules' colours each along its own dye, as a stain does.
    Float 0..255 in and out, same shape.
    """
    s = tf.random.experimental.stateless_split(seed, num=3)
    bg = tf.constant(np.asarray(PBC_STAINS.background, np.float32) + 1.0)
    od = -tf.math.log((tf.reshape(image, [-1, 3]) + 1.0) / bg)
    amounts = od @ tf.constant(_PBC_UNMIX)
    turned = tf.constant(_PBC_DYES) + tf.random.stateless_uniform(
        [2, 3], s[0], -STAIN_DIRECTION, STAIN_DIRECTION
    )
    turned = turned / tf.norm(turned, axis=1, keepdims=True)
    new_basis = tf.concat([turned, tf.constant(_PBC_RESIDUAL, tf.float32)], axis=0)
    lo, hi = np.log(STAIN_AMOUNT)
    scale = tf.concat([tf.exp(tf.random.stateless_uniform([2], s[1], lo, hi)), [1.0]], axis=0)
    new_bg = tf.random.stateless_uniform([3], s[2], *STAIN_BACKGROUND) + 1.0
    rgb = new_bg * tf.exp(-((amounts * scale) @ new_basis)) - 1.0
    return tf.clip_by_value(tf.reshape(rgb, tf.shape(image)), 0.0, 255.0)


def make_dataset(
    paths: Sequence[str],
    labels: Sequence[int] | np.ndarray | None = None,
    *,
    image_size: int | tuple[int, int] = 224,
    batch_size: int = 32,
    shuffle: bool = False,
    augment: bool = False,
    augment_domain: bool = False,
    augment_stain: bool = False,
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
    without it memory does not grow with the dataset. ``augment_domain`` adds
    :func:`augment_other_lab` to ``augment``'s flips and rotations, ``augment_stain``
    :func:`restain` (both need ``augment``).
    """
    if isinstance(image_size, int):
        image_size = (image_size, image_size)
    if (augment_domain or augment_stain) and not augment:
        raise ValueError("augment_domain and augment_stain need augment=True")
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

        def _augment(xy, i):
            key = tf.stack([tf.cast(seed, tf.int64), i])
            x = augment_cell(tf.cast(xy[0], tf.float32), key)
            if augment_stain:
                x = restain(x, tf.stack([key[0] + 2, key[1]]))
            if augment_domain:
                x = augment_other_lab(x, tf.stack([key[0] + 1, key[1]]))
            return x, xy[1]

        ds = tf.data.Dataset.zip((ds, counter)).map(_augment, num_parallel_calls=AUTOTUNE)
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
