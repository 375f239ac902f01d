"""Every notebook opens on any Jupyter: badges, and a setup cell for hosted ones (issue 32).

In a checkout the setup cell must do nothing (nbval runs it there); on a hosted Jupyter
without bloodlib it clones the repository (the package and its embedded sample) and
installs it, fetching nothing else. The hosted branch is run here for real against a local
clone of this repository, with pip faked.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
# pyproject's [project.urls] (read by pattern: tomllib is Python 3.11+, bloodlib runs on 3.10)
REPOSITORY = re.search(
    r'^Repository = "([^"]+)"', (ROOT / "pyproject.toml").read_text(), re.M
).group(1)


def _setup_cell(path: Path) -> str:
    cells = [c for c in nbformat.read(path, as_version=4).cells if c.cell_type == "code"]
    return cells[0].source


def test_every_notebook_has_the_same_setup_cell_first():
    cells = {p.name: _setup_cell(p) for p in NOTEBOOKS}
    first = next(iter(cells.values()))
    assert 'find_spec("bloodlib") is None' in first
    assert f'"{REPOSITORY}"' in first  # the repository pyproject names, in one place
    assert all(c == first for c in cells.values()), "the setup cells differ between notebooks"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_badges_open_this_notebook_on_colab_and_binder(path):
    title = nbformat.read(path, as_version=4).cells[0].source
    slug = REPOSITORY.removeprefix("https://github.com/")
    assert (
        f"https://colab.research.google.com/github/{slug}/blob/main/notebooks/{path.name}" in title
    )
    assert f"https://mybinder.org/v2/gh/{slug}/HEAD?labpath=notebooks%2F{path.name}" in title


def test_in_a_checkout_the_setup_cell_does_nothing(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    calls = []
    monkeypatch.setattr(subprocess, "run", lambda *a, **k: calls.append(a))
    exec(compile(_setup_cell(NOTEBOOKS[0]), "setup", "exec"), {})
    assert calls == [] and list(tmp_path.iterdir()) == []


def test_on_a_hosted_jupyter_it_clones_installs_and_moves_into_the_notebooks(monkeypatch, tmp_path):
    """The hosted branch, for real but offline: this repository cloned from disk, pip faked."""
    import importlib.util

    real_find_spec, real_run = importlib.util.find_spec, subprocess.run
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "bloodlib" else real_find_spec(name, *a),
    )
    pip = []

    def run(cmd, **kwargs):
        if cmd[:3] == [sys.executable, "-m", "pip"]:
            pip.append(cmd)
            return subprocess.CompletedProcess(cmd, 0)
        return real_run(cmd, **kwargs)

    monkeypatch.setattr(subprocess, "run", run)
    monkeypatch.setenv("BLOODLIB_REPO", str(ROOT))  # a local clone: nothing from the network
    monkeypatch.chdir(tmp_path)
    path = list(sys.path)
    try:
        exec(compile(_setup_cell(NOTEBOOKS[0]), "setup", "exec"), {})
        checkout = tmp_path / "bloodlib"
        assert Path.cwd() == checkout / "notebooks"
        assert (checkout / "data" / "sample").is_dir()  # the sample comes with the clone
        assert pip == [[sys.executable, "-m", "pip", "install", "-q", "-e", str(checkout)]]
        # Run twice (a re-executed notebook): the clone is reused, not fetched again.
        monkeypatch.chdir(tmp_path)
        exec(compile(_setup_cell(NOTEBOOKS[0]), "setup", "exec"), {})
        assert len(pip) == 2
    finally:
        sys.path[:] = path
