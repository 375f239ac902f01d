"""What a hematologist knows about the eight PBC classes, as data, with its sources.

Notebook 01 renders these structures (a morphology table, one annotated figure per class,
the hard pairs) beside its prose on the stain, the analyser and the differential count;
keeping the table's text here keeps it in one place, reviewable and testable (every class
covered, every source cited).

Sizes are the usual textbook ranges for cells in a May-Grünwald-Giemsa-stained blood film;
they vary between sources by a micrometre or two.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from PIL import Image

from bloodlib import CLASSES
from bloodlib.core.config import DEFAULT_SEED

#: The references behind this module, by key.
SOURCES: dict[str, str] = {
    "bain2015": "Bain BJ. Blood Cells: A Practical Guide. 5th ed. Wiley-Blackwell; 2015.",
    "palmer2015": (
        "Palmer L, Briggs C, McFadden S, Zini G, Burthem J, Rozenberg G, Proytcheva M, "
        "Machin SJ. ICSH recommendations for the standardization of nomenclature and grading "
        "of peripheral blood cell morphological features. Int J Lab Hematol. "
        "2015;37(3):287-303. doi:10.1111/ijlh.12327"
    ),
    "acevedo2020": (
        "Acevedo A, Merino A, Alférez S, Molina Á, Boldú L, Rodellar J. A dataset of "
        "microscopic peripheral blood cell images for development of automatic recognition "
        "systems. Data in Brief. 2020;30:105474. doi:10.1016/j.dib.2020.105474"
    ),
    "acevedo2019": (
        "Acevedo A, Alférez S, Merino A, Puigví L, Rodellar J. Recognition of peripheral "
        "blood cell images using convolutional neural networks. Comput Methods Programs "
        "Biomed. 2019;180:105020. doi:10.1016/j.cmpb.2019.105020"
    ),
}


@dataclass(frozen=True)
class CellType:
    """One class of the PBC dataset as a hematologist describes it."""

    name: str  # the dataset's folder name
    full_name: str
    size_um: str  # diameter in a stained film, micrometres
    nucleus: str
    chromatin: str
    cytoplasm: str
    granules: str
    labels: tuple[str, ...]  # short labels for the annotated figure
    sources: tuple[str, ...] = ("bain2015", "palmer2015")


CELL_TYPES: dict[str, CellType] = {
    c.name: c
    for c in (
        CellType(
            "basophil",
            "basophil (basophilic granulocyte)",
            "10-14",
            "segmented, often hidden under the granules",
            "condensed",
            "scarce, pale; mostly covered by granules",
            "large, dark purple-black granules that cover the nucleus",
            ("dark purple granules", "nucleus hidden", "rarest leukocyte"),
        ),
        CellType(
            "eosinophil",
            "eosinophil (eosinophilic granulocyte)",
            "12-17",
            "usually two lobes ('spectacles')",
            "coarse, condensed",
            "filled with granules",
            "large, round, uniform orange-red granules",
            ("orange-red granules", "bilobed nucleus"),
        ),
        CellType(
            "erythroblast",
            "erythroblast (nucleated red blood cell)",
            "8-12",
            "small, round, often eccentric",
            "very dense, almost black (pyknotic)",
            "pink-grey to bluish (haemoglobin forming)",
            "none",
            ("round dense nucleus", "pink-grey cytoplasm", "no granules"),
        ),
        CellType(
            "ig",
            "immature granulocytes: promyelocytes, myelocytes, metamyelocytes",
            "10-25 (promyelocytes largest)",
            "round or oval (promyelocyte, myelocyte) to kidney-shaped (metamyelocyte)",
            "finer than a neutrophil's; nucleoli in promyelocytes",
            "blue (promyelocyte) turning pink as the cell matures",
            "coarse purple primary granules (promyelocyte), fine specific granules later",
            ("unsegmented nucleus", "immature chromatin", "granules vary with stage"),
        ),
        CellType(
            "lymphocyte",
            "lymphocyte",
            "7-10 (small); up to 15 (large)",
            "round, fills most of the cell",
            "dense, clumped",
            "thin rim, pale sky blue",
            "usually none; a few azurophilic granules in large granular lymphocytes",
            ("round nucleus fills the cell", "thin blue rim", "small"),
        ),
        CellType(
            "monocyte",
            "monocyte",
            "12-20 (the largest normal leukocyte)",
            "large, folded or kidney-shaped",
            "lacy, finer than a lymphocyte's",
            "abundant, grey-blue ('ground glass'), may hold vacuoles",
            "very fine azurophilic dust",
            ("folded, kidney-shaped nucleus", "grey-blue cytoplasm", "vacuoles"),
        ),
        CellType(
            "neutrophil",
            "neutrophil (segmented and band neutrophilic granulocytes)",
            "12-15",
            "2-5 lobes joined by thin strands (segmented) or a curved band",
            "coarse, clumped",
            "pale pink",
            "fine lilac (neutral-staining) granules",
            ("lobed nucleus", "pale pink cytoplasm", "fine granules"),
        ),
        CellType(
            "platelet",
            "platelet (thrombocyte)",
            "1.5-3",
            "none: a fragment of a megakaryocyte",
            "-",
            "pale blue-grey",
            "fine purple granules in the centre",
            ("tiny, no nucleus", "purple granules", "often clumped"),
        ),
    )
}

#: Pairs of classes that are hard to tell apart, and why (what to look at to decide).
HARD_PAIRS: tuple[tuple[str, str, str], ...] = (
    (
        "ig",
        "neutrophil",
        "Granulocytes mature continuously: a metamyelocyte's indented nucleus becomes a band, "
        "then a segmented neutrophil. Where the indentation is deep enough to call it a band "
        "is a convention, and observers disagree near it.",
    ),
    (
        "ig",
        "monocyte",
        "Myelocytes and monocytes are both large with an unsegmented, oval or indented nucleus "
        "and blue-grey cytoplasm; the granules (specific granules, a Golgi zone) and the "
        "chromatin (coarser in the myelocyte, lacy in the monocyte) decide.",
    ),
    (
        "lymphocyte",
        "erythroblast",
        "Both are small round cells with a dense round nucleus and little cytoplasm; the "
        "erythroblast's nucleus is darker and more uniform, its cytoplasm pink-grey "
        "(haemoglobin) rather than sky blue.",
    ),
    (
        "basophil",
        "eosinophil",
        "Both are packed with granules; colour is the main clue. Basophil granules dissolve "
        "in water and can wash out during staining, and uneven staining darkens eosinophil "
        "granules, so in some films the two look alike.",
    ),
)


def morphology_table(classes: Sequence[str] = CLASSES) -> pd.DataFrame:
    """One row per class: full name, size (µm), nucleus, chromatin, cytoplasm, granules."""
    rows = [
        {
            "class": c.name,
            "what it is": c.full_name,
            "size (µm)": c.size_um,
            "nucleus": c.nucleus,
            "chromatin": c.chromatin,
            "cytoplasm": c.cytoplasm,
            "granules": c.granules,
        }
        for c in (CELL_TYPES[name] for name in classes)
    ]
    return pd.DataFrame(rows).set_index("class")


def hard_pairs_table() -> pd.DataFrame:
    """The classes that are hard to tell apart, and why."""
    return pd.DataFrame(HARD_PAIRS, columns=["class", "confused with", "why"])


def references(keys: Sequence[str] | None = None) -> str:
    """The sources as a Markdown list (all of them, or ``keys`` in that order)."""
    return "\n".join(f"- {SOURCES[k]}" for k in (keys or SOURCES))


def plot_class_card(table: pd.DataFrame, name: str, n: int = 3, seed: int = DEFAULT_SEED):
    """One class on one figure: ``n`` random usable images and its short morphology labels.

    ``table`` is a manifest table (``path``, ``label``, ``status``). Returns the Figure.
    """

    cell = CELL_TYPES[name]
    rows = table[(table["label"] == name) & (table.get("status", "ok") == "ok")]
    rng = np.random.default_rng(seed)
    picks = rows.iloc[np.sort(rng.choice(len(rows), size=min(n, len(rows)), replace=False))]
    fig, axes = plt.subplots(
        1, n + 1, figsize=(2.2 * n + 3.2, 2.5), layout="constrained",
        gridspec_kw={"width_ratios": [1] * n + [1.5]},
    )  # fmt: skip
    for ax, path in zip(axes[:n], list(picks["path"]) + [None] * n, strict=False):
        ax.set_xticks([])
        ax.set_yticks([])
        if path is not None:
            with Image.open(path) as im:
                ax.imshow(im.convert("RGB"))
    text_ax = axes[n]
    text_ax.axis("off")
    lines = [f"size (µm): {cell.size_um}", *cell.labels]
    text_ax.text(
        0.0, 0.95, "\n".join(f"• {line}" for line in lines), va="top", ha="left", fontsize=10,
        transform=text_ax.transAxes, wrap=True,
    )  # fmt: skip
    fig.suptitle(cell.full_name, fontsize=11, x=0.01, ha="left")
    return fig
