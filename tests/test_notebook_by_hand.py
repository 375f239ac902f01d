"""Notebook 03 builds the network by hand: its Keras lines make what ``build_classifier`` makes.

The cells are run as the notebook holds them (found by their tags), on a tiny registered
backbone, so that a student who copies them gets the library's network, phase by phase.
"""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest
import tiny_models

from bloodlib.models import backbones
from bloodlib.train.network import build_classifier, set_trainable

pytestmark = pytest.mark.unit

NOTEBOOK = Path(__file__).resolve().parent.parent / "notebooks" / "03_fine_tuning.ipynb"
TINY = tiny_models.backbone("tiny", tiny_models.convnet_builder, "caffe", feature_dim=8)


def _cell(tag: str) -> str:
    nb = nbformat.read(NOTEBOOK, as_version=4)
    cells = [c.source for c in nb.cells if tag in c.metadata.get("tags", [])]
    assert len(cells) == 1, f"notebook 03 has {len(cells)} cells tagged {tag!r}"
    return cells[0]


def _structure(model) -> list[tuple[str, list[tuple[int, ...]]]]:
    """Every layer, nested ones too, as its type and its weights' shapes, in graph order."""
    return [
        (type(layer).__name__, [tuple(w.shape) for w in layer.weights])
        for layer in backbones.leaves(model)
    ]


def _trainable(model) -> list[tuple[int, ...]]:
    return [tuple(w.shape) for w in model.trainable_weights]


@pytest.mark.parametrize("train_batchnorm", [False, True])
def test_the_hand_built_network_is_build_classifiers_in_both_phases(
    monkeypatch, capsys, train_batchnorm
):
    monkeypatch.setitem(backbones.REGISTRY, "tiny", TINY)
    cfg = tiny_models.finetune_config(unfreeze_from_block=1, train_batchnorm=train_batchnorm)
    scope = {"cfg": cfg}
    exec(compile(_cell("build-by-hand"), "notebook 03, build by hand", "exec"), scope)
    by_hand, library = scope["by_hand"], build_classifier(cfg)
    assert _structure(by_hand) == _structure(library)
    assert by_hand.output_shape == library.output_shape
    set_trainable(library, cfg, phase=1)
    assert _trainable(by_hand) == _trainable(library) == [(8, 8), (8,)]  # the head only

    exec(compile(_cell("unfreeze-by-hand"), "notebook 03, unfreeze by hand", "exec"), scope)
    set_trainable(library, cfg, phase=2)
    assert _trainable(by_hand) == _trainable(library)
    assert len(_trainable(by_hand)) > 2  # block 1 (and its batch norm when asked) joined
    assert "phase 2 trains" in capsys.readouterr().out
