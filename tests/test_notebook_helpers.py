"""bloodlib.teach.notebook display helpers: the sample banner."""

from __future__ import annotations

import pytest

from bloodlib.core.config import SAMPLE_DIR
from bloodlib.data import source
from bloodlib.teach import notebook

pytestmark = pytest.mark.unit


@pytest.mark.parametrize("data", ["sample", " Sample ", None, SAMPLE_DIR, str(SAMPLE_DIR / "ig")])
def test_sample_is_recognised(data):
    assert source.is_sample(data)


@pytest.mark.parametrize("data", ["mendeley", "/work/shared/data", SAMPLE_DIR.parent])
def test_other_data_is_not_the_sample(data):
    assert not source.is_sample(data)


def test_banner_shows_only_for_the_sample(monkeypatch):
    shown = []
    monkeypatch.setattr(notebook, "display", lambda obj: shown.append(obj))
    notebook.data_banner("/some/lab/folder")
    assert shown == []
    notebook.data_banner("sample")
    assert len(shown) == 1
    assert "README's Results section" in shown[0].data
    assert "Smoke-test numbers" in shown[0].data
