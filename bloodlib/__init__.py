"""bloodlib: peripheral blood cell recognition with transfer learning.

A small helper library behind the numbered notebooks in ``notebooks/``.
One image moves forward through: source -> manifest -> split -> pipeline ->
backbone -> features -> svm | finetune -> evaluate -> plots.
"""

__version__ = "0.1.0"

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

#: File suffixes bloodlib treats as images (lower case). The manifest decides per file whether
#: it really is one; a suffix only decides whether a file is looked at.
IMAGE_SUFFIXES: tuple[str, ...] = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff")
