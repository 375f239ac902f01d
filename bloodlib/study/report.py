"""A run's summary for a reader: ``python -m bloodlib report RUN [--format md|html|json]``.

Every model of ``metrics.json`` (accuracy with its interval, balanced accuracy, macro F1,
calibration before and after temperature scaling, training time from its sidecar), and what
the numbers stand on: data, split, seed, machine, versions, commit, each notebook's minutes,
and the main figures. Built from the run folder's own files only, so anyone can make it for
their run. The README's and the docs' result tables are rendered by the same functions from
the summaries committed under ``docs/results/`` (``bloodlib.study.doc_tables``).
"""

from __future__ import annotations

import html
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import markdown

from bloodlib import __version__
from bloodlib.core.errors import BloodlibError
from bloodlib.core.io import read_json, write_json, write_text
from bloodlib.models.saved import read_sidecar

#: The figures a report shows when the run made them (file name patterns in ``figures/``; the
#: first match of each), in reading order.
MAIN_FIGURES = (
    ("04_comparison.png", "Test accuracy per model, with the paper's results"),
    ("04_confusion_*_finetune.png", "Confusion matrix of the fine-tuned network"),
    (
        "04_reliability_*_finetune.png",
        "Calibration of the fine-tuned network, before and after scaling",
    ),
    ("03_learning_curves_*.png", "Learning curves, with the epoch kept"),
    ("04_cam_*_finetune.png", "Where the fine-tuned network looks (saliency)"),
    ("05_remedies.png", "Another lab's cells: what each remedy buys"),
)

#: Columns of the models table: (key, header).
MODEL_COLUMNS = (
    ("name", "model"),
    ("test_accuracy", "accuracy (95 % CI)"),
    ("balanced_accuracy", "balanced"),
    ("macro_f1", "macro F1"),
    ("ece", "ECE before → after T"),
    ("n_test", "test cells"),
    ("train_minutes", "training (min)"),
)


class ReportError(BloodlibError):
    """A folder that is not a finished run (no metrics.json)."""


def _read(path: Path) -> Any:
    try:
        return read_json(path)
    except (OSError, ValueError):
        return None


def _train_seconds(run_dir: Path, entry: Mapping[str, Any]) -> float | None:
    """The training wall time its sidecar records (``metrics.train_seconds``), if any."""
    try:
        info = read_sidecar(run_dir / entry["model_path"])
    except (BloodlibError, KeyError, OSError, TypeError):
        return None
    seconds = (info.get("metrics") or {}).get("train_seconds")
    return float(seconds) if isinstance(seconds, int | float) else None


def model_rows(run_dir: Path, entries: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """One row per metrics entry with what a reader compares; TTA rows share their network's
    training time."""
    rows = []
    for e in entries:
        seconds = None if e.get("tta") else _train_seconds(run_dir, e)
        rows.append(
            {
                "name": e.get("name"),
                "backbone": e.get("backbone"),
                "method": e.get("method"),
                "tta": bool(e.get("tta")),
                "test_accuracy": e.get("test_accuracy"),
                "accuracy_ci95": e.get("accuracy_ci95"),
                "balanced_accuracy": e.get("balanced_accuracy"),
                "macro_f1": e.get("macro_f1"),
                "ece": e.get("ece"),
                "ece_after_scaling": e.get("ece_after_scaling"),
                "temperature": e.get("temperature"),
                "n_test": e.get("n_test"),
                "train_minutes": None if seconds is None else round(seconds / 60, 1),
            }
        )
    return rows


def summary(run_dir: str | os.PathLike) -> dict[str, Any]:
    """Everything the report says about ``run_dir``, as JSON-ready data."""
    run_dir = Path(run_dir)
    metrics = _read(run_dir / "metrics.json")
    if not isinstance(metrics, dict) or not isinstance(metrics.get("models"), list):
        raise ReportError(
            f"{run_dir} has no metrics.json with a list of models: run the study first "
            "(python -m bloodlib run --name NAME); notebook 04 writes it"
        )
    prov = _read(run_dir / "provenance.json") or {}
    data = (prov.get("data") or {}).get("data_json") or _read(run_dir / "data.json") or {}
    hardware = prov.get("hardware") or {}
    return {
        "run": run_dir.name,
        "profile": prov.get("profile"),
        "finished": prov.get("timestamp"),
        "status": prov.get("status"),
        "data": {
            "source": data.get("source"),
            "files": data.get("files"),
            "usable": data.get("usable"),
            "excluded": {k: v for k, v in (data.get("status_counts") or {}).items() if k != "ok"},
            "split": data.get("split_counts"),
        },
        "split_seed": (metrics.get("split") or {}).get("seed"),
        "machine": {
            "cpu": hardware.get("cpu_model"),
            "cores": hardware.get("usable_cores"),
            "gpus": hardware.get("gpus") or [],
        },
        "versions": {
            "bloodlib": prov.get("bloodlib_version", __version__),
            "python": prov.get("python"),
            **{
                k: v
                for k, v in (prov.get("packages") or {}).items()
                if k in ("tensorflow", "tensorflow-cpu", "keras", "scikit-learn") and v
            },
        },
        "commit": (prov.get("git") or {}).get("commit"),
        "dirty": (prov.get("git") or {}).get("dirty"),
        "notebooks": [
            {
                "name": n.get("name"),
                "status": n.get("status"),
                "minutes": round(float(n.get("elapsed_s") or 0) / 60, 1),
            }
            for n in prov.get("notebooks") or []
        ],
        "models": model_rows(run_dir, metrics["models"]),
        "figures": _figures(run_dir),
    }


def _figures(run_dir: Path) -> list[dict[str, str]]:
    found = []
    for pattern, caption in MAIN_FIGURES:
        matches = sorted((run_dir / "figures").glob(pattern))
        if matches:
            found.append({"file": f"figures/{matches[0].name}", "caption": caption})
    return found


def _pct(x: Any) -> str:
    return "–" if not isinstance(x, int | float) else f"{100 * x:.1f} %"


def _cell(row: Mapping[str, Any], key: str) -> str:
    value = row.get(key)
    if key == "test_accuracy":
        ci = row.get("accuracy_ci95")
        interval = f" ({_pct(ci[0])} – {_pct(ci[1])})" if ci else ""
        return _pct(value) + interval
    if key in ("balanced_accuracy", "macro_f1"):
        return _pct(value)
    if key == "ece":
        after, t = row.get("ece_after_scaling"), row.get("temperature")
        if not isinstance(value, int | float):
            return "–"
        scaled = (
            f" → {after:.3f} (T = {t:.2f})"
            if isinstance(after, int | float) and isinstance(t, int | float)
            else ""
        )
        return f"{value:.3f}{scaled}"
    if value is None:
        return "–"
    return str(value)


def models_table(
    rows: Sequence[Mapping[str, Any]], columns: Sequence[tuple[str, str]] = MODEL_COLUMNS
) -> str:
    """The models as a Markdown table (``rows``: :func:`model_rows`)."""
    lines = [
        "| " + " | ".join(h for _, h in columns) + " |",
        "| " + " | ".join("---" for _ in columns) + " |",
    ]
    lines += ["| " + " | ".join(_cell(r, k) for k, _ in columns) + " |" for r in rows]
    return "\n".join(lines)


def scope_line(s: Mapping[str, Any]) -> str:
    """What the numbers stand on, in one sentence."""
    split = s["data"].get("split") or {}
    parts = [f"{s['data'].get('usable')} usable images ({s['data'].get('source')})"]
    if split:
        parts.append(
            "split " + " / ".join(f"{split.get(k, 0)} {k}" for k in ("train", "val", "test"))
        )
    parts.append(f"split seed {s.get('split_seed')}")
    m = s["machine"]
    gpus = f", {len(m['gpus'])} GPU" if m.get("gpus") else ", no GPU"
    parts.append(f"{m.get('cores')}-core {m.get('cpu')}{gpus}")
    if s.get("commit"):
        parts.append(
            f"commit {s['commit'][:7]}" + (" (uncommitted changes)" if s.get("dirty") else "")
        )
    return "; ".join(parts) + "."


def to_markdown(s: Mapping[str, Any]) -> str:
    """The report as Markdown (figures linked relative to the run folder)."""
    out = [
        f"# Run `{s['run']}`" + (f" (profile `{s['profile']}`)" if s.get("profile") else ""),
        "",
        scope_line(s),
        "",
        "## Models on the test split",
        "",
        models_table(s["models"]),
        "",
        "Accuracy with its 95 % bootstrap interval over test cells (the interval says nothing "
        "about another training seed); ECE before and after the temperature fitted on the "
        "validation cells. Models scored on the same cells are compared with a paired test "
        "in notebook 04, not by whether these intervals overlap.",
    ]
    if s.get("notebooks"):
        out += ["", "## Notebooks", "", "| notebook | status | minutes |", "| --- | --- | --- |"]
        out += [f"| {n['name']} | {n['status']} | {n['minutes']} |" for n in s["notebooks"]]
    v = s.get("versions") or {}
    out += ["", "## Versions", "", ", ".join(f"{k} {val}" for k, val in v.items() if val)]
    if s.get("figures"):
        out += ["", "## Figures", ""]
        out += [f"![{f['caption']}]({f['file']})\n\n*{f['caption']}*\n" for f in s["figures"]]
    return "\n".join(out).rstrip() + "\n"


def to_html(s: Mapping[str, Any]) -> str:
    """The report as one HTML page (the Markdown, rendered; figures linked, not embedded)."""
    body = markdown.markdown(to_markdown(s), extensions=["tables"])
    title = html.escape(f"bloodlib run {s['run']}")
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{title}</title><style>body{{font-family:sans-serif;max-width:60em;margin:2em auto;"
        "padding:0 1em}table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:.3em .6em}"
        "img{max-width:100%}</style></head>\n<body>\n" + body + "\n</body></html>\n"
    )


FORMATS = ("md", "html", "json")


def write(run_dir: str | os.PathLike, formats: Sequence[str] = ("md", "html")) -> list[Path]:
    """``report.md`` / ``report.html`` / ``report.json`` in the run folder; returns the paths."""
    unknown = set(formats) - set(FORMATS)
    if unknown:
        raise ReportError(f"unknown report format(s) {sorted(unknown)}; use {', '.join(FORMATS)}")
    run_dir = Path(run_dir)
    s = summary(run_dir)
    written = []
    for fmt in formats:
        path = run_dir / f"report.{fmt}"
        if fmt == "json":
            write_json(path, s)
        else:
            write_text(path, to_markdown(s) if fmt == "md" else to_html(s))
        written.append(path)
    return written
