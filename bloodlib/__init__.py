"""bloodlib: peripheral blood cell recognition with transfer learning.

The library behind the numbered notebooks in ``notebooks/``, in layers; each imports only
those below it (a test checks the import graph):

==========  ====================================================================
``cli``     the command line (``python -m bloodlib``)
``study``   runs the notebooks; scores a run (04) and another lab (05)
``teach``   sentences, figures and widgets the notebooks show
``train``   design 1 (features + SVM), design 2 (fine-tuning), adapting
``predict`` the prediction engine, classify, Grad-CAM, export
``models``  backbones, weights, the saved-model format, SVM, ensembles
``data``    sources, scans, splits, the tf.data pipeline, colour and size
``evaluate`` metrics, calibration, comparisons, rejection, seeds
``core``    paths, errors, atomic writes, hashes, the paper's facts
==========  ====================================================================

One image's path: ``data.source`` -> ``data.manifest`` -> ``data.split`` ->
``data.pipeline`` -> ``models.backbones`` -> ``models.features`` -> ``models.svm`` |
``train.finetune`` -> ``predict.engine`` -> ``evaluate`` -> ``teach.plots``.
Here: the class names and image formats every layer shares.
"""

import os as _os

__version__ = "0.2.0"

# TensorFlow's C++ INFO/WARNING lines (oneDNN notices, CPU-guard, XLA banners) are noise for a
# student and in committed notebook outputs; errors still show. Set before TensorFlow is
# imported anywhere in bloodlib; a user's own TF_CPP_MIN_LOG_LEVEL wins.
_os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

# Abseil ignores that variable while TensorFlow's libraries load (see bloodlib.core.quiet): filter
# the first `import tensorflow` with the same rule.
from bloodlib.core import quiet as _quiet  # noqa: E402

_quiet.install()

CLASSES: tuple[str, ...] = (
    "basophil",
    "eosinophil",
    "erythroblast",
    "ig",
    "lymphocyte",
    "monocyte",
    "neutrophil",
    "platelet",
)

#: Class name -> output index of every model: the order of CLASSES, in one place.
CLASS_INDEX: dict[str, int] = {c: i for i, c in enumerate(CLASSES)}

#: Image file suffix (lower case) -> the format its content must have. The manifest decides per
#: file whether it really is one (by its bytes); a suffix only decides whether a file is looked
#: at. Every listed format is decoded by the pipeline (TensorFlow, or Pillow for TIFF/WebP).
IMAGE_FORMATS: dict[str, str] = {
    ".jpg": "JPEG",
    ".jpeg": "JPEG",
    ".png": "PNG",
    ".bmp": "BMP",
    ".tif": "TIFF",
    ".tiff": "TIFF",
    ".gif": "GIF",
    ".webp": "WEBP",
}
IMAGE_SUFFIXES: tuple[str, ...] = tuple(IMAGE_FORMATS)
