"""Models saved before the package moved into subpackages (issue 31) still load and classify."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import tiny_models

from bloodlib import CLASSES
from bloodlib.models import backbones
from bloodlib.predict.engine import load_classifier

pytestmark = pytest.mark.unit

LEGACY = Path(__file__).parent / "fixtures" / "legacy"
CELLS = [str(LEGACY / "cells" / f"{c}.jpg") for c in CLASSES]


def _expected(name: str) -> np.ndarray:
    return np.array(json.loads((LEGACY / "expected.json").read_text())[name])


def test_a_network_saved_before_the_move_classifies_as_it_did():
    clf = load_classifier(LEGACY / "caffe_net.keras")
    proba = clf.predict_proba(CELLS, progress=False, engine="keras")
    np.testing.assert_allclose(proba, _expected("caffe_net.keras"), atol=2e-6)


def test_an_svm_saved_before_the_move_classifies_as_it_did(monkeypatch):
    bb = tiny_models.backbone("tiny", tiny_models.mean_colour_builder, "none", feature_dim=3)
    monkeypatch.setitem(backbones.REGISTRY, "tiny", bb)
    clf = load_classifier(LEGACY / "tiny_svm.skops")
    proba = clf.predict_proba(CELLS, progress=False)
    np.testing.assert_allclose(proba, _expected("tiny_svm.skops"), atol=2e-6)
    assert proba.argmax(1).tolist() == list(range(8))


def test_the_legacy_svm_names_its_function_by_the_old_module_and_the_alias_does_not_stay():
    import sys

    import skops.io as sio

    assert "bloodlib.svm.signed_sqrt" in sio.get_untrusted_types(file=LEGACY / "tiny_svm.skops")
    assert "bloodlib.svm" not in sys.modules  # the alias lives only while a file loads
