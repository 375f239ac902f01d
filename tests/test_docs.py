"""The README and the docs say no number a run could contradict (issue 32).

Every table of results is a generated block rendered from a committed run summary
(``docs/results/*.json``); this fails when a block and its summary disagree. The README's
own prose may state the paper's published numbers, and no measured one.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from bloodlib.core import paper
from bloodlib.study import doc_tables

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
#: "About 2,000 words" (issue 32): a guide, not a diary.
README_WORDS = 2_100


def _outside_blocks(text: str) -> str:
    text = re.sub(r"<!-- generated: [\w-]+ -->.*?<!-- end generated -->", "", text, flags=re.S)
    return re.sub(r"```.*?```", "", text, flags=re.S)


def test_generated_blocks_match_the_committed_summaries():
    stale = doc_tables.refresh(write=False)
    assert stale == [], f"run `python -m bloodlib docs` to refresh: {[p.name for p in stale]}"


def test_the_readme_is_a_guide_not_a_diary():
    assert len(README.read_text(encoding="utf-8").split()) <= README_WORDS


def test_the_only_percentages_the_readme_types_are_the_papers():
    typed = {
        float(v) for v in re.findall(r"(\d+(?:\.\d+)?)\s?%", _outside_blocks(README.read_text()))
    }
    published = {round(100 * v, 1) for v in paper.ACCURACY.values()}
    assert typed <= published, (
        f"measured numbers typed into the README: {sorted(typed - published)}"
    )


def test_rendering_a_summary_gives_its_numbers(tmp_path):
    summary = {
        "run": "r",
        "profile": "full",
        "split_seed": 42,
        "data": {"usable": 10, "source": "folder x", "split": {"train": 7, "val": 1, "test": 2}},
        "machine": {"cores": 2, "cpu": "Test CPU", "gpus": []},
        "commit": "0123456789",
        "notebooks": [{"name": "01_data_exploration", "status": "ran", "minutes": 0.5}],
        "models": [
            {"name": "m", "method": "finetune", "tta": False, "test_accuracy": 0.985,
             "accuracy_ci95": [0.97, 0.995], "n_test": 200, "train_minutes": 8.2},
        ],
    }  # fmt: skip
    (tmp_path / "full.json").write_text(__import__("json").dumps(summary))
    doc = tmp_path / "doc.md"
    doc.write_text("# x\n\n<!-- generated: headline -->\n\n<!-- generated: results-full -->\n")
    assert doc_tables.refresh([doc], results_dir=tmp_path) == [doc]
    text = doc.read_text()
    assert "**98.5 %** (95 % interval 97.0–99.5 %) on the 200 cells" in text
    assert "| m | 98.5 % (97.0 % – 99.5 %)" in text
    assert doc_tables.refresh([doc], results_dir=tmp_path) == []  # rendered once: now stable
    # A summary that changes makes the block stale.
    summary["models"][0]["test_accuracy"] = 0.99
    (tmp_path / "full.json").write_text(__import__("json").dumps(summary))
    assert doc_tables.refresh([doc], write=False, results_dir=tmp_path) == [doc]


def test_the_docs_command_checks_and_rewrites(monkeypatch, tmp_path, capsys):
    """``python -m bloodlib docs --check`` exits 1 on a stale block and writes nothing;
    without ``--check`` it rewrites the block, after which the check passes."""
    from bloodlib.cli import main

    doc = tmp_path / "doc.md"
    doc.write_text("<!-- generated: results-sample -->\nstale\n<!-- end generated -->\n")
    real = doc_tables.refresh
    monkeypatch.setattr(
        doc_tables, "refresh", lambda write=True: real([doc], write=write, results_dir=tmp_path)
    )
    assert main(["docs", "--check"]) == 1
    assert "stale" in doc.read_text() and "out of date" in capsys.readouterr().out
    assert main(["docs"]) == 0
    assert "stale" not in doc.read_text()
    assert main(["docs", "--check"]) == 0


def test_the_site_build_fails_on_a_broken_link_or_a_missing_page(tmp_path):
    """``make docs`` (in ``make test``) is strict: with the site's own validation rules, a
    link to a missing page or a nav entry without its file is an error, not a warning."""
    import subprocess
    import sys

    import yaml

    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text())
    assert config["strict"] is True
    docs = tmp_path / "docs"
    docs.mkdir()

    def build(index: str, nav: list) -> subprocess.CompletedProcess:
        (docs / "index.md").write_text(index)
        site = {"site_name": "t", "docs_dir": "docs", "strict": True, "nav": nav}
        site["validation"] = config["validation"]
        (tmp_path / "mkdocs.yml").write_text(yaml.safe_dump(site))
        return subprocess.run(
            [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", "site"],
            cwd=tmp_path,
            capture_output=True,
            text=True,
        )

    assert build("# ok\n", [{"Home": "index.md"}]).returncode == 0
    broken = build("# ok\n\n[gone](missing.md)\n", [{"Home": "index.md"}])
    assert broken.returncode != 0 and "missing.md" in broken.stderr
    no_page = build("# ok\n", [{"Home": "index.md"}, {"Gone": "gone.md"}])
    assert no_page.returncode != 0 and "gone.md" in no_page.stderr
