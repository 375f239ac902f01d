"""Every exercise's solution code is a real code cell, which nbval executes in CI.

A solution typed into Markdown never runs, so nothing catches it when the library changes
under it (two of notebook 03's did not run from JupyterLab). Each solution's code is a
hidden code cell tagged ``solution`` right after its exercise; the committed notebooks hold
them executed, nbval runs them (``make test``), and a study run leaves them out
(``bloodlib.study.kernels.without_solutions``).
"""

from __future__ import annotations

import re
from pathlib import Path

import nbformat
import pytest

from bloodlib.study.kernels import SOLUTION_TAG, without_solutions

pytestmark = pytest.mark.unit

NOTEBOOKS = sorted((Path(__file__).resolve().parent.parent / "notebooks").glob("0*.ipynb"))
HINT = "solution cell below"


def _is_solution(cell) -> bool:
    return cell.cell_type == "code" and SOLUTION_TAG in cell.metadata.get("tags", [])


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_solution_code_lives_in_hidden_solution_cells_after_its_exercise(path):
    cells = nbformat.read(path, as_version=4).cells
    exercises = next(i for i, c in enumerate(cells) if "## Exercises" in c.source)
    n_solutions = 0
    for i, c in enumerate(cells):
        if c.cell_type == "markdown":
            for block in re.findall(r"<details>.*?</details>", c.source, flags=re.S):
                assert "```python" not in block, f"{path.name} cell {i}: code typed in Markdown"
            if HINT in c.source:  # the cell(s) right after it are its solution
                assert _is_solution(cells[i + 1]), f"{path.name} cell {i}: no solution cell"
        if _is_solution(c):
            n_solutions += 1
            assert i > exercises, f"{path.name} cell {i}: a solution before the exercises"
            assert c.metadata.get("jupyter", {}).get("source_hidden") is True
            assert "nbval-ignore-output" in c.metadata["tags"]
            assert c.source.startswith("# Solution, exercise ")
            assert c.get("outputs") is not None and c.execution_count  # committed executed
    assert n_solutions >= 3


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_solutions_take_their_paths_from_the_run_folder(path):
    """From JupyterLab the working directory is notebooks/, from papermill the run's: a
    solution that opens "runs/..." works in one of them only."""
    for c in nbformat.read(path, as_version=4).cells:
        if _is_solution(c):
            assert not re.search(r"""["']runs/""", c.source), c.source


def test_a_study_run_gets_the_notebook_without_its_solutions():
    path = next(p for p in NOTEBOOKS if p.stem.startswith("03"))
    full = nbformat.read(path, as_version=4)
    lean = without_solutions(path)
    assert len(lean.cells) == len(full.cells) - sum(map(_is_solution, full.cells)) > 0
    assert not any(map(_is_solution, lean.cells))
