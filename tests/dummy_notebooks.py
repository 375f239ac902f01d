"""Tiny stand-ins for the study notebooks, used to test the runner without TensorFlow."""

from __future__ import annotations

import json
from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_notebook

KERNEL = "python3"
NAMES = ("01_data_exploration", "02_feature_extraction_svm", "03_fine_tuning")

# Each notebook declares the conventional run_dir/data/seed plus a few of its own parameters.
EXTRA_PARAMS = {
    "01_data_exploration": "",
    "02_feature_extraction_svm": "batch_size = 1\n",
    "03_fine_tuning": "epochs_head = 0\nbackbones = []\n",
}

WORK = """\
import json, pathlib
import bloodlib  # the runner must make the checkout importable
rd = pathlib.Path(run_dir)
rd.mkdir(parents=True, exist_ok=True)
with open(rd / "order.txt", "a") as fh:
    fh.write("{name}\\n")
(rd / "{name}.out.json").write_text(json.dumps({{"data": data, "seed": seed}}))
"""

METRICS = """\
(rd / "metrics.json").write_text(json.dumps({"models": [
    {"name": "m1", "backbone": "efficientnet_lite0", "method": "svm",
     "test_accuracy": 0.91234, "balanced_accuracy": 0.85}]}))
"""


def write_notebook(path: Path, name: str, fail: bool = False, extra_code: str = "") -> Path:
    params = 'run_dir = "../runs/notebook"\ndata = "sample"\nseed = 0\n' + EXTRA_PARAMS.get(
        name, ""
    )
    cells = [
        new_code_cell(params, metadata={"tags": ["parameters"]}),
        new_code_cell(WORK.format(name=name)),
    ]
    if name == NAMES[-1]:
        cells.append(new_code_cell(METRICS))
    if fail:
        cells.append(new_code_cell('raise ValueError("boom in the dummy")'))
    if extra_code:
        cells.append(new_code_cell(extra_code))
    nb = new_notebook(
        cells=cells,
        metadata={
            "kernelspec": {"name": KERNEL, "display_name": "Python 3", "language": "python"},
            "language_info": {"name": "python"},
        },
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, path)
    return path


def write_study(folder: Path, fail: str | None = None) -> Path:
    """Write the dummy study into ``folder``; ``fail`` names a notebook that raises."""
    for name in NAMES:
        write_notebook(folder / f"{name}.ipynb", name, fail=name == fail)
    return folder


def run_dummy_study(notebooks: Path, runs_root: Path, **kwargs) -> Path:
    """``run_study`` on dummy notebooks: the sample profile, the plain kernel, no progress."""
    from bloodlib.study.runner import run_study

    return run_study(
        profile=kwargs.pop("profile", "sample"),
        kernel=KERNEL,
        runs_root=runs_root,
        notebooks_dir=notebooks,
        progress=False,
        **kwargs,
    )


def statuses(run_dir: Path) -> dict[str, str]:
    """Notebook name -> its status in the run's provenance (ran, skipped, ...)."""
    prov = json.loads((run_dir / "provenance.json").read_text())
    return {nb["name"]: nb["status"] for nb in prov["notebooks"]}
