"""Helpers the numbered notebooks share: environment report, run-folder I/O, display.

Scoring saved models (``metrics.json``) lives in :mod:`bloodlib.study.scoring`.

Notebooks hand results to each other only through the run folder:
``split.csv`` and ``data.json`` (01), ``models/*`` with sidecars (02, 03),
``metrics.json`` (04).
"""

from __future__ import annotations

import io
import os
import platform
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import pandas as pd
from IPython.display import HTML, Image, display

from bloodlib import __version__
from bloodlib.core.io import write_json, write_with
from bloodlib.data import source
from bloodlib.data.source import is_sample
from bloodlib.data.split import load_split as _load
from bloodlib.teach.plots import save_figure

# Notebooks are teaching material: keep TensorFlow's C++ info logs out of their outputs.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def environment(show: bool = True) -> dict[str, Any]:
    """Versions and devices, printed at the top of every notebook."""
    # lazy: the other helpers need no TensorFlow
    import keras
    import sklearn
    import tensorflow as tf

    gpus = [d.name for d in tf.config.list_physical_devices("GPU")]
    info = {
        "bloodlib": __version__,
        "python": platform.python_version(),
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "scikit-learn": sklearn.__version__,
        "devices": [d.device_type for d in tf.config.list_physical_devices()],
        "gpus": gpus,
    }
    if show:
        print(
            f"bloodlib {info['bloodlib']} | Python {info['python']} | TensorFlow {info['tensorflow']}"
            f" | Keras {info['keras']} | scikit-learn {info['scikit-learn']}"
        )
        print(
            f"Devices: {', '.join(sorted(set(info['devices'])))}"
            f"{' (' + str(len(gpus)) + ' GPU)' if gpus else ' (no GPU: running on CPU)'}"
        )
    return info


#: The banner every notebook shows when it runs on the embedded sample (issue 10).
SAMPLE_BANNER = (
    "Smoke-test numbers on a small sample; the full-data results are in the README's "
    "Results section."
)


def data_banner(data: str | os.PathLike | None) -> None:
    """Show a visible banner when ``data`` is the embedded sample; nothing otherwise."""
    if not is_sample(data):
        return

    display(
        HTML(
            '<div style="border-left: 6px solid #e6a700; background: #fff8e1; '
            'padding: 0.6em 1em; margin: 0.5em 0;">'
            f"<b>Embedded sample.</b> {SAMPLE_BANNER}</div>"
        )
    )


def run_path(run_dir: str | Path, *parts: str) -> Path:
    path = Path(run_dir).joinpath(*parts)
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def load_split(run_dir: str | Path) -> pd.DataFrame:
    path = Path(run_dir) / "split.csv"
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} not found: run notebook 01 with the same run_dir first (it writes the split)"
        )

    return _load(path)


def show(fig, run_dir: str | Path, name: str):
    """Save a figure as ``run_dir/figures/<name>.png``, display it once, and close it."""

    save_figure(fig, Path(run_dir) / "figures" / f"{name}.png")
    # The notebook gets a lighter copy (the PNG in figures/ keeps full resolution): JPEG for
    # photo grids, PNG for charts, so committed notebooks stay small enough for GitHub.
    photos = any(ax.images for ax in fig.axes)
    buf = io.BytesIO()
    fig.savefig(
        buf,
        format="jpeg" if photos else "png",
        dpi=72 if photos else 80,
        bbox_inches="tight",
        **({"pil_kwargs": {"quality": 80}} if photos else {}),
    )
    display(Image(data=buf.getvalue(), format="jpeg" if photos else "png"))
    plt.close(fig)


def record_data(run_dir: str | Path, data: str, manifest, split: pd.DataFrame) -> Path:
    """``data.json`` and ``quality.csv``: what the run's data was, for provenance and later notebooks."""

    run_dir = Path(run_dir)
    write_with(run_dir / "quality.csv", lambda p: manifest.quality.to_csv(p, index=False))
    return write_json(
        run_dir / "data.json",
        {
            "data": str(data),
            "source": source.describe(data),
            "root": str(manifest.root),
            "manifest_hash": manifest.content_hash(),
            "files": int(len(manifest.table)),
            "usable": int(len(manifest.usable)),
            "status_counts": manifest.status_counts(),
            "split_counts": split["split"].value_counts().to_dict(),
            "warnings": list(manifest.warnings),
        },
    )
