"""bloodlib.teach.hematology: the morphology content covers every class and cites its sources."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from bloodlib import CLASSES
from bloodlib.teach import hematology

pytestmark = pytest.mark.unit


def test_every_class_is_described_in_full():
    assert set(hematology.CELL_TYPES) == set(CLASSES)
    table = hematology.morphology_table()
    assert list(table.index) == list(CLASSES)
    for column in ("size (µm)", "nucleus", "chromatin", "cytoplasm", "granules"):
        assert table[column].str.len().min() > 0, column


def test_ig_is_spelled_out():
    assert all(
        stage in hematology.CELL_TYPES["ig"].full_name
        for stage in ("promyelocytes", "myelocytes", "metamyelocytes")
    )


def test_every_cited_source_exists_and_hard_pairs_name_real_classes():
    for cell in hematology.CELL_TYPES.values():
        assert set(cell.sources) <= set(hematology.SOURCES)
        assert 1 <= len(cell.labels) <= 4  # short labels for a figure, not paragraphs
    pairs = hematology.hard_pairs_table()
    assert set(pairs["class"]) | set(pairs["confused with"]) <= set(CLASSES)
    assert hematology.references(["bain2015"]).startswith("- Bain BJ")


def test_class_card_shows_images_and_labels(tmp_path):
    paths = []
    for i in range(4):
        path = tmp_path / f"ig_{i}.png"
        Image.fromarray(np.full((20, 20, 3), 40 * i, np.uint8)).save(path)
        paths.append(str(path))
    table = pd.DataFrame({"path": paths, "label": "ig", "status": ["ok"] * 3 + ["duplicate"]})
    fig = hematology.plot_class_card(table, "ig", n=3, seed=0)
    image_axes = [ax for ax in fig.axes if ax.images]
    assert len(image_axes) == 3
    texts = " ".join(t.get_text() for ax in fig.axes for t in ax.texts)
    assert all(label in texts for label in hematology.CELL_TYPES["ig"].labels)
