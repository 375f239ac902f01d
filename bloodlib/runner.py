"""Run the study: the numbered notebooks, in order, with papermill, resumably.

A run folder ``runs/NAME/`` is the only channel between notebooks (split.csv, data.json,
figures/, models/, metrics.json). Executed notebooks land in ``run_dir/notebooks/``. Each
finished notebook leaves ``run_dir/.state/<nb>.json`` holding a hash of its source, its
parameters and the previous notebook's hash, so a re-run skips what is unchanged and re-runs
everything downstream of a change.

papermill is imported lazily: it costs seconds and the CLI must start instantly.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import yaml

from bloodlib.config import REPO_ROOT
from bloodlib.errors import BloodlibError
from bloodlib.io import atomic_path, read_json, write_json

PROFILES_FILE = Path(__file__).with_name("profiles.yml")
NOTEBOOKS_DIR = REPO_ROOT / "notebooks"
#: The study is every notebook named like ``01_something.ipynb``, run in name order.
NOTEBOOK_GLOB = "[0-9][0-9]_*.ipynb"
#: Injected into every notebook whether or not its parameters cell declares them.
ALWAYS_PASSED = ("run_dir", "data")
#: Named data sources understood by bloodlib.source.resolve (kept in sync by a test).
DATA_KEYWORDS = ("sample", "mendeley", "pbc")
#: Excluded from the resume hash: moving or renaming a run folder must not invalidate it.
NOT_HASHED = ("run_dir",)


class RunError(BloodlibError):
    """A run cannot start or a notebook failed; the message is meant for the user."""

    exit_code = 1


class DataSpecError(RunError):
    """The data specification is missing or points nowhere."""

    exit_code = 2


@dataclass
class NotebookPlan:
    """One notebook of a run: where it is and exactly what it will be given."""

    name: str
    path: Path
    declared: list[str]
    parameters: dict[str, Any]
    kernel: str | None = None


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


def load_profiles(path: Path = PROFILES_FILE) -> dict[str, dict[str, Any]]:
    with open(path, encoding="utf-8") as fh:
        return yaml.safe_load(fh) or {}


def profile_names(path: Path = PROFILES_FILE) -> list[str]:
    return list(load_profiles(path))


def parse_value(text: str) -> Any:
    """A ``-p`` value as YAML, with ``1e-3`` read as a float (YAML 1.1 would keep a string)."""
    value = yaml.safe_load(text) if text.strip() else ""
    if isinstance(value, str):
        try:
            return float(value) if any(c in value for c in ".eE") else int(value)
        except ValueError:
            pass
    return value


def parse_override(text: str) -> tuple[str, Any]:
    """``KEY=VALUE`` (or ``NOTEBOOK.KEY=VALUE``) -> (key, parsed value)."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise RunError(f"bad parameter {text!r}: expected KEY=VALUE, e.g. -p epochs_head=1")
    return key.strip(), parse_value(value)


def _split_layer(
    layer: Mapping[str, Any], origin: str
) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """Split a user layer into (flat, per-notebook). Accepts the profile shape
    (``common:``/``notebooks:``), a flat mapping, and ``NOTEBOOK.KEY`` scoped keys."""
    flat: dict[str, Any] = {}
    scoped: dict[str, dict[str, Any]] = {}
    if "common" in layer or "notebooks" in layer:
        extra = set(layer) - {"common", "notebooks", "description"}
        if extra:
            raise RunError(f"{origin}: unexpected top-level keys {sorted(extra)}")
        flat.update(layer.get("common") or {})
        for nb, params in (layer.get("notebooks") or {}).items():
            scoped.setdefault(str(nb), {}).update(params or {})
    else:
        for key, value in layer.items():
            nb, dot, name = str(key).rpartition(".")
            if dot:
                scoped.setdefault(nb, {})[name] = value
            else:
                flat[name] = value
    return flat, scoped


def _check_scoped(scoped: Mapping[str, Any], notebooks: list[str], origin: str) -> None:
    unknown = set(scoped) - set(notebooks)
    if unknown:
        raise RunError(f"{origin}: no notebook named {sorted(unknown)}; the study has {notebooks}")


def _resolve_data(spec: Any, profile: str) -> str:
    """A named source stays as is; a path becomes absolute (notebooks run in notebooks/).

    Only existence is checked here, cheaply and before anything runs; the notebooks resolve
    the source itself with :func:`bloodlib.source.resolve`.
    """
    if spec is None or spec == "":
        raise DataSpecError(
            f"profile {profile!r} needs a dataset: pass --data FOLDER_OR_ZIP "
            "(or use --profile sample for the embedded sample)"
        )
    if str(spec).strip().lower() in DATA_KEYWORDS:
        return str(spec).strip().lower()
    path = Path(str(spec)).expanduser().resolve()
    if not path.exists():
        looked = "" if str(path) == str(spec) else f" (looked for {path})"
        raise DataSpecError(
            f"data not found: {spec}{looked}. Pass --data with an existing folder of class "
            f"subfolders, a zip file, or one of {', '.join(DATA_KEYWORDS)}."
        )
    return str(path)


def find_notebooks(notebooks_dir: Path = NOTEBOOKS_DIR) -> list[Path]:
    found = sorted(Path(notebooks_dir).glob(NOTEBOOK_GLOB))
    if not found:
        raise RunError(f"no study notebooks ({NOTEBOOK_GLOB}) in {notebooks_dir}")
    return found


def _declared(path: Path) -> tuple[list[str], str | None]:
    """Parameter names declared by the notebook's ``parameters`` cell, and its kernel name."""
    import papermill

    try:
        declared = list(papermill.inspect_notebook(path))
    except ValueError as exc:  # e.g. no kernelspec/language in the notebook metadata
        raise RunError(f"cannot read the parameters of {path.name}: {exc}") from exc
    meta = json.loads(path.read_text(encoding="utf-8")).get("metadata", {})
    return declared, meta.get("kernelspec", {}).get("name")


def plan_study(
    profile: str = "sample",
    data: str | os.PathLike | None = None,
    overrides: Mapping[str, Any] | None = None,
    params_file: str | os.PathLike | None = None,
    run_dir: Path | None = None,
    notebooks_dir: Path = NOTEBOOKS_DIR,
    profiles_file: Path = PROFILES_FILE,
) -> list[NotebookPlan]:
    """Work out each notebook's parameters without running anything (validates everything)."""
    profiles = load_profiles(profiles_file)
    if profile not in profiles:
        raise RunError(f"unknown profile {profile!r}; choose one of {list(profiles)}")
    prof = profiles[profile]
    prof_flat, prof_nb = _split_layer(
        {"common": prof.get("common"), "notebooks": prof.get("notebooks")}, f"profile {profile!r}"
    )
    file_flat: dict[str, Any] = {}
    file_nb: dict[str, dict[str, Any]] = {}
    if params_file is not None:
        try:
            layer = yaml.safe_load(Path(params_file).read_text(encoding="utf-8")) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise RunError(f"cannot read parameters file {params_file}: {exc}") from exc
        if not isinstance(layer, dict):
            raise RunError(f"{params_file}: expected a mapping of parameters")
        file_flat, file_nb = _split_layer(layer, str(params_file))
    over_flat, over_nb = _split_layer(dict(overrides or {}), "-p")
    if any(
        "run_dir" in layer for layer in (file_flat, over_flat, *file_nb.values(), *over_nb.values())
    ):
        raise RunError("run_dir is chosen by the runner: use --name and --runs-root instead")

    # data is one value for the whole run, so only unscoped layers may set it. Checked first:
    # a wrong --data is the most likely mistake and the cheapest to report.
    spec = prof_flat.get("data")
    for flat in (file_flat, over_flat):
        spec = flat.get("data", spec)
    if data is not None:
        spec = os.fspath(data)
    data_value = _resolve_data(spec, profile)

    paths = find_notebooks(notebooks_dir)
    names = [p.stem for p in paths]
    # The profile may describe notebooks absent here (e.g. a test folder): not an error.
    _check_scoped(file_nb, names, str(params_file))
    _check_scoped(over_nb, names, "-p")
    run_dir_value = str(Path(run_dir).resolve()) if run_dir else None

    plans = []
    user_keys: dict[str, set[str]] = {"": set(file_flat) | set(over_flat)}
    for nb in names:
        user_keys[nb] = set(file_nb.get(nb, {})) | set(over_nb.get(nb, {}))
    declared_anywhere: set[str] = set()
    for path in paths:
        declared, kernel = _declared(path)
        declared_anywhere.update(declared)
        merged: dict[str, Any] = {}
        for layer in (prof_flat, prof_nb.get(path.stem), file_flat, file_nb.get(path.stem)):
            merged.update(layer or {})
        merged.update(over_flat)
        merged.update(over_nb.get(path.stem, {}))
        merged["data"] = data_value
        merged["run_dir"] = run_dir_value
        params = {k: v for k, v in merged.items() if k in declared or k in ALWAYS_PASSED}
        bad = user_keys[path.stem] - set(declared) - set(ALWAYS_PASSED)
        if bad:
            raise RunError(f"{path.stem} has no parameter(s) {sorted(bad)}; it declares {declared}")
        plans.append(NotebookPlan(path.stem, path, declared, params, kernel))

    # A typo in --params/-p would otherwise be dropped silently.
    unknown = user_keys[""] - declared_anywhere - set(ALWAYS_PASSED)
    if unknown:
        raise RunError(
            f"unknown parameter(s) {sorted(unknown)}: no notebook declares them "
            f"(declared: {sorted(declared_anywhere)})"
        )
    return plans


# --- execution ---------------------------------------------------------------------------


def _hash(plan: NotebookPlan, upstream: str) -> str:
    params = {k: v for k, v in plan.parameters.items() if k not in NOT_HASHED}
    blob = json.dumps(
        {
            "source": hashlib.sha256(plan.path.read_bytes()).hexdigest(),
            "parameters": params,
            "upstream": upstream,
        },
        sort_keys=True,
        default=str,
    )
    return hashlib.sha256(blob.encode()).hexdigest()


@contextmanager
def _kernel_env() -> Iterator[None]:
    """Let kernels import bloodlib from this checkout even without an editable install
    (kernels inherit the environment of the process that starts them)."""
    old = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT), *([old] if old else [])])
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = old


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


def _execute(
    plan: NotebookPlan,
    output: Path,
    kernel: str | None,
    cwd: Path,
    progress: bool,
) -> None:
    """Execute one notebook into ``output`` atomically; keep a partial one on failure."""
    import papermill

    failed = output.with_name(f"{plan.name}.failed.ipynb")
    with atomic_path(output) as tmp:
        try:
            papermill.execute_notebook(
                str(plan.path),
                str(tmp),
                parameters=plan.parameters,
                kernel_name=kernel,
                cwd=str(cwd),
                progress_bar=progress,
                log_output=False,
                request_save_on_cell_execute=True,
            )
        except BaseException as exc:
            kept = tmp.exists() and tmp.stat().st_size > 0
            if kept:
                os.replace(tmp, failed)
            where = f" The partial notebook is kept at {failed}." if kept else ""
            if isinstance(exc, papermill.PapermillExecutionError):
                evalue = " ".join(str(exc.evalue).split()).rstrip(".")
                raise RunError(
                    f"notebook {plan.name} failed in cell {exc.cell_index} "
                    f"(In [{exc.exec_count}]): {exc.ename}: {evalue}.{where} "
                    "Fix the cause and run again: finished notebooks are skipped."
                ) from None
            if isinstance(exc, Exception):
                hint = ""
                if type(exc).__name__ == "NoSuchKernel":
                    hint = (
                        " Register one with `python -m bloodlib kernel` or pass --kernel python3."
                    )
                raise RunError(
                    f"notebook {plan.name} could not run: {type(exc).__name__}: {exc}.{where}{hint}"
                ) from exc
            raise  # KeyboardInterrupt and friends: the partial notebook is kept, no wrapping
    failed.unlink(missing_ok=True)


def _state_path(run_dir: Path, name: str) -> Path:
    return run_dir / ".state" / f"{name}.json"


def _is_current(run_dir: Path, name: str, digest: str, output: Path) -> bool:
    try:
        state = read_json(_state_path(run_dir, name))
    except (OSError, ValueError):
        return False
    return state.get("hash") == digest and output.exists()


def results_table(run_dir: Path) -> str | None:
    """A plain-text table of ``run_dir/metrics.json`` models, or None when absent."""
    try:
        models = read_json(Path(run_dir) / "metrics.json").get("models") or []
    except (OSError, ValueError, AttributeError):
        return None
    if not isinstance(models, list):
        return None
    cols = ("name", "backbone", "method", "test_accuracy", "balanced_accuracy")

    def cell(value: Any) -> str:
        if isinstance(value, float):
            return f"{value:.4f}"
        return "-" if value is None else str(value)

    rows = [[cell(m.get(c)) for c in cols] for m in models if isinstance(m, dict)]
    if not rows:
        return None
    widths = [max(len(c), *(len(r[i]) for r in rows)) for i, c in enumerate(cols)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(cols, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)) for r in rows]
    return "\n".join(lines)


def check_weights(plans: list[NotebookPlan]) -> None:
    """Fail before the first notebook when a requested backbone has no ImageNet weights here.

    Better a clear message at once than a notebook failing an hour into the run (offline
    machines cannot download the keras.applications weights).
    """
    wanted: dict[str, Any] = {}
    for plan in plans:
        files = plan.parameters.get("weights_files") or {}
        for name in plan.parameters.get("backbones") or []:
            wanted[name] = files.get(name, "imagenet")
    if not wanted or set(wanted) == {"efficientnet_lite0"}:
        return  # the offline backbone: nothing to check, and no Keras import for the runner
    from bloodlib import backbones

    problems = []
    for name, weights in wanted.items():
        try:
            backbones.resolve_weights(backbones.get(name), weights)
        except (backbones.BackboneWeightsError, KeyError) as exc:
            problems.append(str(exc).strip("'\""))
    if problems:
        raise RunError("\n\n".join(problems))


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
    run_dir = (Path(runs_root) / (name or profile)).resolve()
    plans = plan_study(profile, data, overrides, params_file, run_dir, notebooks_dir)
    check_weights(plans)

    (run_dir / "notebooks").mkdir(parents=True, exist_ok=True)
    _say(f"run {run_dir} (profile {profile}, data {plans[0].parameters['data']})")
    results: list[NotebookResult] = []
    upstream, cascade, status = "", False, "failed"
    n = len(plans)
    try:
        with _kernel_env():
            for i, plan in enumerate(plans, 1):
                digest = _hash(plan, upstream)
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
                    _execute(plan, output, kernel, notebooks_dir, progress)
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
                        "elapsed_s": round(elapsed, 1),
                        "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                    },
                )
                _say(f"{label}: done in {_fmt_duration(elapsed)}")
                results.append(NotebookResult(plan.name, "ran", digest, elapsed, str(output)))
        status = "complete"
    finally:
        _write_provenance(plans, run_dir, kernel, profile, results, status)

    table = results_table(run_dir)
    if table:
        _say("\n" + table)
    _say(f"\nresults in {run_dir}")
    return run_dir


def _write_provenance(
    plans: list[NotebookPlan],
    run_dir: Path,
    kernel: str | None,
    profile: str,
    results: list[NotebookResult],
    status: str,
) -> None:
    from bloodlib import provenance

    kernels = {kernel or p.kernel for p in plans}
    record = provenance.collect(
        {p.name: p.parameters for p in plans},
        run_dir,
        kernel=kernels.pop() if len(kernels) == 1 else None,
        profile=profile,
        notebooks=[r.as_dict() for r in results],
    )
    record["status"] = status
    write_json(run_dir / "provenance.json", record)
