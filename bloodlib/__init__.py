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
