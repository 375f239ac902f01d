"""The README's and the docs' result tables, rendered from committed run summaries.

A number typed into documentation goes stale the day a run changes; here every table of
results is a block between ``<!-- generated: NAME -->`` and ``<!-- end generated -->``,
rendered from the summaries committed under ``docs/results/`` (``bloodlib report RUN
--format json``) by the same code as a run's own report. ``python -m bloodlib docs`` rewrites
the blocks; ``--check`` (and a test) fails when one disagrees with its summary.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from bloodlib.core.config import REPO_ROOT
from bloodlib.core.io import read_json, write_text
from bloodlib.study.report import models_table, scope_line

#: Where the reference runs' summaries are committed (``report.json`` of each run).
RESULTS_DIR = REPO_ROOT / "docs" / "results"
#: The files whose generated blocks are kept in step with the summaries.
DOCUMENTS = (REPO_ROOT / "README.md", *sorted((REPO_ROOT / "docs").glob("*.md")))

#: The reference runs, by summary file name: what made each (said under its table).
RUNS: dict[str, str] = {
    "sample": "make run (python -m bloodlib run --profile sample)",
    "full": "python -m bloodlib run --profile full --data ../shared/data/pbc-dev/PBC_dataset_normal_DIB",
    "accurate": "python -m bloodlib run --profile accurate --data ../shared/data/pbc-dev/PBC_dataset_normal_DIB",
    "backbones": "python -m bloodlib run --profile backbones --data ../shared/data/pbc-dev/PBC_dataset_normal_DIB",
    "seeds": "python -m bloodlib run --profile full --name seeds -p n_seeds=3 --data ../shared/data/pbc-dev/PBC_dataset_normal_DIB",
}

# A block's marker, and what it rendered last time (up to its end marker, never into the
# next block: a marker without an end is a placeholder not rendered yet).
_BLOCK = re.compile(
    r"<!-- generated: (?P<name>[\w-]+) -->\n"
    r"(?:(?P<body>(?:(?!<!-- generated:).)*?)<!-- end generated -->\n)?",
    re.S,
)


def summaries(results_dir: Path = RESULTS_DIR) -> dict[str, dict[str, Any]]:
    """The committed summaries, by run name (``docs/results/<name>.json``)."""
    return {p.stem: read_json(p) for p in sorted(Path(results_dir).glob("*.json"))}


def _missing(name: str) -> str:
    return (
        f"*No summary of this run is committed yet.* `{RUNS.get(name, name)}`, then "
        f"`python -m bloodlib report runs/<NAME> --format json`, copied to "
        f"`docs/results/{name}.json`, fill this table (`python -m bloodlib docs`)."
    )


def run_table(s: Mapping[str, Any], name: str) -> str:
    """One run's models, what they stand on, and the command that made them."""
    return (
        f"{models_table(s['models'])}\n\n{scope_line(s)} Made by `{RUNS.get(name, name)}`; "
        f"the run's own report: `python -m bloodlib report runs/{s['run']}`."
    )


def headline(runs: Mapping[str, Mapping[str, Any]]) -> str:
    """One sentence: the fine-tuned network of the most complete reference run, with its scope."""
    for name in ("full", "sample"):
        s = runs.get(name)
        if not s:
            continue
        plain = [m for m in s["models"] if m["method"] == "finetune" and not m["tta"]]
        if not plain:
            continue
        m = plain[0]
        ci = m.get("accuracy_ci95") or (None, None)
        what = (
            "the PBC dev data's held-out test split"
            if name == "full"
            else "the embedded sample's test split (a smoke test, not the study's result)"
        )
        minutes = f", trained in {m['train_minutes']} min" if m.get("train_minutes") else ""
        machine = s["machine"]
        return (
            f"**{100 * m['test_accuracy']:.1f} %** (95 % interval {100 * ci[0]:.1f}–"
            f"{100 * ci[1]:.1f} %) on the {m['n_test']} cells of {what}: EfficientNet-Lite0 "
            f"fine-tuned by the `{s.get('profile')}` profile, split seed {s.get('split_seed')}"
            f"{minutes} on a {machine.get('cores')}-core CPU. Details: [results](docs/results.md)."
        )
    return _missing("full")


def results(runs: Mapping[str, Mapping[str, Any]]) -> str:
    """The README's one results table: every committed run's models, each on its own cells."""
    rows = []
    for name, s in runs.items():
        for m in s["models"]:
            ci = m.get("accuracy_ci95")
            interval = f"{100 * ci[0]:.1f}–{100 * ci[1]:.1f} %" if ci else "–"
            rows.append(
                f"| `{s.get('profile') or name}` | {m['name']} | {100 * m['test_accuracy']:.1f} % "
                f"| {interval} | {m['n_test']} |"
            )
    if not rows:
        return _missing("full")
    head = "| run | model | test accuracy | 95 % interval | test cells |\n| --- | --- | --- | --- | --- |"
    return (
        head + "\n" + "\n".join(rows) + "\n\nEach run is scored on its own test cells: "
        "compare models within a run (notebook 04 does, with a paired test), not across runs. "
        "Scope and commands: [results](docs/results.md)."
    )


def notebook_times(runs: Mapping[str, Mapping[str, Any]]) -> str:
    """Minutes per notebook in each committed run (all on the machine its summary names)."""
    names = [n for n in ("sample", "full") if n in runs and runs[n].get("notebooks")]
    if not names:
        return _missing("sample")
    notebooks = [n["name"] for n in runs[names[0]]["notebooks"]]
    minutes = {r: {n["name"]: n["minutes"] for n in runs[r]["notebooks"]} for r in names}
    head = "| notebook | " + " | ".join(f"minutes, `{r}`" for r in names) + " |"
    lines = [head, "| --- |" + " --- |" * len(names)]
    for nb in notebooks:
        lines.append(f"| {nb} | " + " | ".join(str(minutes[r].get(nb, "–")) for r in names) + " |")
    machines = {
        f"{runs[r]['machine'].get('cores')}-core {runs[r]['machine'].get('cpu')}" for r in names
    }
    return "\n".join(lines) + f"\n\nMeasured on {', '.join(sorted(machines))}, no GPU."


def renderers(runs: Mapping[str, Mapping[str, Any]]) -> dict[str, Callable[[], str]]:
    """Block name -> what it shows."""
    table: dict[str, Callable[[], str]] = {
        "headline": lambda: headline(runs),
        "results": lambda: results(runs),
        "notebook-times": lambda: notebook_times(runs),
    }
    for name in RUNS:
        table[f"results-{name}"] = (
            (lambda n=name: run_table(runs[n], n)) if name in runs else (lambda n=name: _missing(n))
        )
    return table


def render(text: str, runs: Mapping[str, Mapping[str, Any]]) -> str:
    """``text`` with every generated block rendered anew."""
    table = renderers(runs)

    def block(m: re.Match) -> str:
        name = m.group("name")
        if name not in table:
            raise KeyError(f"unknown generated block {name!r}; known: {', '.join(table)}")
        return f"<!-- generated: {name} -->\n{table[name]()}\n<!-- end generated -->\n"

    return _BLOCK.sub(block, text)


def refresh(
    documents: Sequence[Path] = DOCUMENTS, *, write: bool = True, results_dir: Path = RESULTS_DIR
) -> list[Path]:
    """Render every document's blocks; return those that were out of date (and rewrite them
    when ``write``)."""
    runs = summaries(results_dir)
    stale = []
    for path in documents:
        text = path.read_text(encoding="utf-8")
        new = render(text, runs)
        if new != text:
            stale.append(path)
            if write:
                write_text(path, new)
    return stale
