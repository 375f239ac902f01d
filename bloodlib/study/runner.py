"""Run the study: the numbered notebooks, in order, with papermill, resumably.

A run folder ``runs/NAME/`` is the only channel between notebooks (split.csv, data.json,
figures/, models/, metrics.json). Executed notebooks land in ``run_dir/notebooks/``. Each
finished notebook leaves ``run_dir/.state/<nb>.json`` holding a hash of its source, its
parameters, the library's code, the data source and the previous notebook's hash, so a re-run
skips what is unchanged and re-runs everything downstream of a change.

Trust rules: one process at a time per run folder (``run_dir/.lock``, see :class:`RunLock`);
``--name`` stays inside the runs folder; every parameter is checked against the type of its
default in the notebook's ``parameters`` cell and against :data:`PARAMETER_RULES` before
anything is written.

papermill is imported lazily: it costs seconds and the CLI must start instantly.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from bloodlib.core.config import NOTEBOOKS_DIR
from bloodlib.core.io import read_json, write_json
from bloodlib.data import source
from bloodlib.study import provenance
from bloodlib.study.kernels import execute_notebook, kernel_environment
from bloodlib.study.parameters import (
    run_dir_for,
)
from bloodlib.study.planning import NotebookPlan, check_weights, plan_study
from bloodlib.study.profiles import (
    RunError,
)
from bloodlib.study.run_lock import RunLock, clean_stale_temporaries

#: Excluded from the resume hash: moving or renaming a run folder must not invalidate it.
NOT_HASHED = ("run_dir",)


@dataclass
class NotebookResult:
    name: str
    status: str  # "ran" | "skipped" | "failed"
    hash: str
    elapsed_s: float = 0.0
    output: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "status": self.status,
            "hash": self.hash,
            "elapsed_s": round(self.elapsed_s, 1),
            "output": self.output,
            **self.extra,
        }


# --- profiles and parameters -------------------------------------------------------------


# --- parameter rules ---------------------------------------------------------------------


# --- execution ---------------------------------------------------------------------------


def _hash(plan: NotebookPlan, upstream: str, context: Mapping[str, Any] | None = None) -> str:
    """What a notebook's result depends on: its source, parameters, upstream and ``context``
    (the library's code digest and the data fingerprint)."""
    params = {k: v for k, v in plan.parameters.items() if k not in NOT_HASHED}
    blob = json.dumps(
        {
            "source": hashlib.sha256(plan.path.read_bytes()).hexdigest(),
            "parameters": params,
            "upstream": upstream,
            **({"context": dict(context)} if context else {}),
        },
        sort_keys=True,
        default=str,
    )
    return hashlib.sha256(blob.encode()).hexdigest()


# --- one process per run folder -------------------------------------------------------------


def _fmt_duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, sec = divmod(int(round(seconds)), 60)
    if minutes < 60:
        return f"{minutes} min {sec:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def _say(message: str) -> None:
    print(message, flush=True)


def _state_path(run_dir: Path, name: str) -> Path:
    return run_dir / ".state" / f"{name}.json"


def _is_current(run_dir: Path, name: str, digest: str, output: Path) -> bool:
    try:
        state = read_json(_state_path(run_dir, name))
    except (OSError, ValueError):
        return False
    return state.get("hash") == digest and output.exists()


def _metrics_list(run_dir: Path, key: str) -> list:
    """``run_dir/metrics.json``'s list under ``key``; empty when absent or malformed."""
    try:
        items = read_json(Path(run_dir) / "metrics.json").get(key) or []
    except (OSError, ValueError, AttributeError):
        return []
    return items if isinstance(items, list) else []


def _text_table(items: list, cols: tuple[str, ...]) -> str | None:
    def cell(value: Any) -> str:
        if isinstance(value, float):
            return f"{value:.4f}"
        if isinstance(value, list):
            return ",".join(str(v) for v in value)
        return "-" if value is None else str(value)

    rows = [[cell(m.get(c)) for c in cols] for m in items if isinstance(m, dict)]
    if not rows:
        return None
    widths = [max(len(c), *(len(r[i]) for r in rows)) for i, c in enumerate(cols)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(cols, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)) for r in rows]
    return "\n".join(lines)


def results_table(run_dir: Path) -> str | None:
    """A plain-text table of ``run_dir/metrics.json`` models, or None when absent."""
    cols = ("name", "backbone", "method", "test_accuracy", "balanced_accuracy")
    return _text_table(_metrics_list(run_dir, "models"), cols)


def spread_table(run_dir: Path) -> str | None:
    """A plain-text table of ``metrics.json``'s ``seed_spread`` rows trained with several
    seeds (mean and standard deviation over seeds, and the test cells every seed got wrong,
    from ``seed_mistakes``), or None when there are none."""
    shared = {
        r.get("name"): r.get("wrong_for_every_seed")
        for r in _metrics_list(run_dir, "seed_mistakes")
        if isinstance(r, dict)
    }
    rows = [
        {**r, "wrong_for_every_seed": shared.get(r.get("name"))}
        for r in _metrics_list(run_dir, "seed_spread")
        if isinstance(r, dict) and isinstance(r.get("n_seeds"), int) and r["n_seeds"] > 1
    ]
    cols = (
        "name",
        "n_seeds",
        "seeds",
        "accuracy_mean",
        "accuracy_std",
        "balanced_accuracy_mean",
        "wrong_for_every_seed",
    )
    return _text_table(rows, cols)


def run_study(
    profile: str = "sample",
    data: str | os.PathLike | None = None,
    name: str | None = None,
    kernel: str | None = None,
    overrides: Mapping[str, Any] | None = None,
    params_file: str | os.PathLike | None = None,
    force: bool = False,
    runs_root: str | os.PathLike = "runs",
    notebooks_dir: str | os.PathLike = NOTEBOOKS_DIR,
    progress: bool = True,
) -> Path:
    """Run (or resume) the study into ``runs_root/NAME`` and return the run folder.

    ``overrides`` maps ``key`` or ``NOTEBOOK.key`` to a value; ``params_file`` is a YAML file,
    flat or shaped like a profile. Raises :class:`RunError` with a user-facing message.
    """
    notebooks_dir = Path(notebooks_dir).resolve()
    # Everything is checked before the first write: the name, the parameters, the weights.
    run_dir = run_dir_for(runs_root, name, profile)
    RunLock(run_dir).check_free()  # a busy run folder is the quickest refusal
    plans = plan_study(profile, data, overrides, params_file, run_dir, notebooks_dir)
    check_weights(plans)

    # Part of every notebook's hash: a changed library or data source is not "unchanged".
    context = {
        "code": provenance.code_digest(),
        "data": source.fingerprint(plans[0].parameters["data"]),
    }
    run_dir.mkdir(parents=True, exist_ok=True)
    with RunLock(run_dir):
        clean_stale_temporaries(run_dir)
        _run_locked(plans, run_dir, profile, kernel, force, notebooks_dir, progress, context)

    table = results_table(run_dir)
    if table:
        _say("\n" + table)
    spread = spread_table(run_dir)
    if spread:
        _say("\nspread over training seeds (same split; std with ddof=1):\n" + spread)
    _say(f"\nresults in {run_dir}")
    return run_dir


def _run_locked(
    plans: list[NotebookPlan],
    run_dir: Path,
    profile: str,
    kernel: str | None,
    force: bool,
    notebooks_dir: Path,
    progress: bool,
    context: Mapping[str, Any],
) -> None:
    """Run the planned notebooks in order, skipping unchanged ones; the caller holds the lock."""
    (run_dir / "notebooks").mkdir(exist_ok=True)
    _say(f"run {run_dir} (profile {profile}, data {plans[0].parameters['data']})")
    results: list[NotebookResult] = []
    upstream, cascade, status = "", False, "failed"
    n = len(plans)
    try:
        with kernel_environment():
            for i, plan in enumerate(plans, 1):
                digest = _hash(plan, upstream, context)
                upstream = digest
                output = run_dir / "notebooks" / plan.path.name
                label = f"[{i}/{n}] {plan.name}"
                if not force and not cascade and _is_current(run_dir, plan.name, digest, output):
                    _say(f"{label}: unchanged, skipped")
                    results.append(NotebookResult(plan.name, "skipped", digest, output=str(output)))
                    continue
                # Once one notebook runs, its outputs may differ: everything after it runs too.
                cascade = True
                _state_path(run_dir, plan.name).unlink(missing_ok=True)
                if progress:
                    _say(f"{label}: running ...")
                start = time.perf_counter()
                try:
                    execute_notebook(plan, output, kernel, notebooks_dir, progress)
                except RunError:
                    elapsed = time.perf_counter() - start
                    _say(f"{label}: FAILED after {_fmt_duration(elapsed)}")
                    results.append(NotebookResult(plan.name, "failed", digest, elapsed))
                    raise
                elapsed = time.perf_counter() - start
                write_json(
                    _state_path(run_dir, plan.name),
                    {
                        "notebook": plan.name,
                        "hash": digest,
                        "parameters": plan.parameters,
                        "context": dict(context),
                        "elapsed_s": round(elapsed, 1),
                        "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                    },
                )
                _say(f"{label}: done in {_fmt_duration(elapsed)}")
                results.append(NotebookResult(plan.name, "ran", digest, elapsed, str(output)))
        status = "complete"
    finally:
        _write_provenance(plans, run_dir, kernel, profile, results, status, context)


def _write_provenance(
    plans: list[NotebookPlan],
    run_dir: Path,
    kernel: str | None,
    profile: str,
    results: list[NotebookResult],
    status: str,
    context: Mapping[str, Any],
) -> None:

    kernels = {kernel or p.kernel for p in plans}
    record = provenance.collect(
        {p.name: p.parameters for p in plans},
        run_dir,
        kernel=kernels.pop() if len(kernels) == 1 else None,
        profile=profile,
        notebooks=[r.as_dict() for r in results],
        code=context.get("code"),
    )
    record["status"] = status
    record["data"]["fingerprint"] = context.get("data")
    write_json(run_dir / "provenance.json", record)
