"""The shipped network by name (issue 32): ``classify pbc-lite0 FOLDER`` needs no training run.

``models.pretrained.resolve`` turns a name into the packaged file; a file the user named wins;
a missing one fails with the fix. When the network is committed, its sidecar must be bound to
it, say how it was made, and record (in ``trained_on``) no cell of the classroom test split,
so that ``classify pbc-lite0 data/sample`` and a class score it on cells it never saw.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from bloodlib.core.config import SAMPLE_DIR
from bloodlib.data import manifest, split
from bloodlib.models import pretrained, saved
from bloodlib.study import pretrain

pytestmark = pytest.mark.unit

SHIPPED = pretrained.SHIPPED_DIR / "pbc-lite0.keras"


def test_a_path_resolves_to_itself(tmp_path):
    model = tmp_path / "mine.keras"
    model.write_bytes(b"x")
    assert pretrained.resolve(model) == model
    assert pretrained.resolve(tmp_path / "absent.keras") == tmp_path / "absent.keras"


def test_a_name_resolves_to_the_packaged_file(monkeypatch, tmp_path):
    monkeypatch.setattr(pretrained, "SHIPPED_DIR", tmp_path)
    (tmp_path / "pbc-lite0.keras").write_bytes(b"x")
    monkeypatch.chdir(tmp_path.parent)
    assert pretrained.resolve("pbc-lite0") == tmp_path / "pbc-lite0.keras"


def test_a_file_named_like_a_shipped_network_wins(monkeypatch, tmp_path):
    monkeypatch.setattr(pretrained, "SHIPPED_DIR", tmp_path / "package")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "pbc-lite0").write_bytes(b"the user's own file")
    assert pretrained.resolve("pbc-lite0") == Path("pbc-lite0")


def test_a_missing_shipped_network_names_the_fix(monkeypatch, tmp_path):
    monkeypatch.setattr(pretrained, "SHIPPED_DIR", tmp_path)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError, match="bloodlib pretrain --data"):
        pretrained.resolve("pbc-lite0")


@pytest.mark.skipif(not SHIPPED.is_file(), reason="pbc-lite0 is not committed in this checkout")
def test_the_shipped_network_is_bound_published_and_never_saw_the_classroom_test_cells():
    model = saved.open_model(SHIPPED)
    saved.require_bound(model, "test")
    info = saved.read_sidecar(SHIPPED)
    published = info["published"]
    assert published["profile"] == pretrain.PROFILE
    assert 0.5 < published["dev_test"]["test_accuracy"] <= 1.0
    seen = set(info["trained_on"]["cells"])
    sources = pretrain.classroom_test_sources()  # the release's files
    assert sources and not {h[: split.TRAINED_ON_DIGITS] for h in sources} & seen
    # ... and the sample's own (shrunk) copies of them, which classify would be given
    classroom = split.make_split(manifest.scan(SAMPLE_DIR, progress=False), seed=42)
    test = classroom.loc[classroom["split"] == "test", "sha256"]
    assert not split.seen_mask(info["trained_on"], test).any()
    assert split.seen_mask(
        info["trained_on"], classroom.loc[classroom["split"] == "train", "sha256"]
    ).any()
