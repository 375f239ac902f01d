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

import ast
import fcntl
import hashlib
import json
import math
import os
import shutil
import socket
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, NoReturn

import yaml

from bloodlib.core.config import REPO_ROOT
from bloodlib.core.errors import BloodlibError, RunLockedError
from bloodlib.core.io import atomic_path, read_json, write_json
from bloodlib.data import source
from bloodlib.data.source import KEYWORDS as DATA_KEYWORDS

PROFILES_FILE = Path(__file__).with_name("profiles.yml")
NOTEBOOKS_DIR = REPO_ROOT / "notebooks"
#: The study is every notebook named like ``01_something.ipynb``, run in name order.
NOTEBOOK_GLOB = "[0-9][0-9]_*.ipynb"
#: Injected into every notebook whether or not its parameters cell declares them.
ALWAYS_PASSED = ("run_dir", "data")
#: Excluded from the resume hash: moving or renaming a run folder must not invalidate it.
NOT_HASHED = ("run_dir",)
#: The run folder's lock file: PID, host and start time of the process running it.
LOCK_NAME = ".lock"
#: Folders of a run (glob patterns, besides the run folder itself) where atomic writes leave
#: hidden temporary files if the run is killed: notebooks, state, models, figures, training
#: logs and their backups.
TEMP_FOLDERS = ("notebooks", ".state", "models", "figures", "train/*", "train/*/backup_*")


class RunError(BloodlibError):
    """A run cannot start or a notebook failed; the message is meant for the user."""

    exit_code = 1


class DataSpecError(RunError):
    """The data specification is missing or points nowhere."""

    exit_code = 2


class ParameterError(RunError):
    """A parameter of the wrong type or out of range, or a run name that leaves the runs folder."""

    exit_code = 2


@dataclass
class NotebookPlan:
    """One notebook of a run: where it is and exactly what it will be given."""

    name: str
    path: Path
    declared: list[str]
    parameters: dict[str, Any]
    kernel: str | None = None
    #: Defaults of the notebook's ``parameters`` cell (only those that are plain literals).
    defaults: dict[str, Any] = field(default_factory=dict)


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
    """Every profile of ``path``, complete: ``extends: BASE`` resolved (see :func:`_extend`)."""
    with open(path, encoding="utf-8") as fh:
        raw = yaml.safe_load(fh) or {}
    return {name: _extend(raw, name, (), path) for name in raw}


def _extend(
    raw: Mapping[str, Any], name: str, chain: tuple[str, ...], path: Path
) -> dict[str, Any]:
    """Profile ``name`` with its ``extends:`` base filled in, one notebook block at a time.

    A profile that is another with a few changes says so (``extends: full``) and lists only
    the changes: its ``common`` keys, and each notebook's keys, override the base's. The
    recipe then lives in one place, and a change to ``full`` reaches every profile built on
    it. The resolved profile keeps ``extends`` to say where it came from.
    """
    prof = raw[name]
    if not isinstance(prof, Mapping):
        raise RunError(f"{path}: profile {name!r} is not a mapping")
    base_name = prof.get("extends")
    if base_name is None:
        return dict(prof)
    if base_name not in raw:
        raise RunError(f"{path}: profile {name!r} extends {base_name!r}, which is not a profile")
    if base_name in (*chain, name):
        cycle = " -> ".join((*chain, name, base_name))
        raise RunError(f"{path}: profiles extend each other in a circle: {cycle}")
    base = _extend(raw, base_name, (*chain, name), path)
    notebooks = dict(base.get("notebooks") or {})
    for nb, params in (prof.get("notebooks") or {}).items():
        notebooks[nb] = {**(notebooks.get(nb) or {}), **(params or {})}
    return {
        **base,
        **{k: v for k, v in prof.items() if k not in ("common", "notebooks")},
        "common": {**(base.get("common") or {}), **(prof.get("common") or {})},
        "notebooks": notebooks,
    }


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
    the source itself with :func:`bloodlib.data.source.resolve`.
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


def notebook_defaults(path: Path) -> dict[str, Any]:
    """``name -> default`` of the notebook's ``parameters`` cell, parsed with :mod:`ast`.

    Only literal defaults (numbers, strings, booleans, None, lists, dicts) are returned: an
    expression has no type to check against, so its parameter is checked by its rule only.
    """
    cells = json.loads(path.read_text(encoding="utf-8")).get("cells", [])
    for cell in cells:
        if "parameters" not in (cell.get("metadata", {}).get("tags") or []):
            continue
        source = cell.get("source", "")
        source = "".join(source) if isinstance(source, list) else source
        try:
            tree = ast.parse(source)
        except SyntaxError as exc:
            raise RunError(f"the parameters cell of {path.name} does not parse: {exc}") from exc
        defaults: dict[str, Any] = {}
        for node in tree.body:
            if isinstance(node, ast.Assign) and len(node.targets) == 1:
                target, value = node.targets[0], node.value
            elif isinstance(node, ast.AnnAssign) and node.value is not None:
                target, value = node.target, node.value
            else:
                continue
            if isinstance(target, ast.Name):
                try:
                    defaults[target.id] = ast.literal_eval(value)
                except ValueError:
                    pass
        return defaults
    return {}


# --- parameter rules ---------------------------------------------------------------------


@dataclass(frozen=True)
class Rule:
    """What a parameter's value must satisfy beyond its type, and why."""

    why: str
    minimum: float | None = None
    above: float | None = None  # strictly greater than
    below: float | None = None  # strictly less than
    maximum: float | None = None
    nullable: bool = False  # None is meaningful (e.g. "the backbone's native size")
    check: Callable[[Any], str | None] | None = None  # returns a problem, or None


def _fractions_problem(value: Any) -> str | None:
    from bloodlib.data.split import _check_fractions  # the split's own rule, in one place

    try:
        _check_fractions(tuple(value))
    except (TypeError, ValueError) as exc:
        return str(exc)
    return None


def _names_problem(value: Any) -> str | None:
    if not value or not all(isinstance(v, str) and v for v in value):
        return "expected a non-empty list of backbone names, e.g. [efficientnet_lite0]"
    return None


def _shots_problem(value: Any, empty_ok: bool = False) -> str | None:
    if not isinstance(value, list) or not (value or empty_ok):
        kind = "a list" if empty_ok else "a non-empty list"
        return f"expected {kind} of cells per class, e.g. [1, 5, 20]"
    if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in value):
        return f"every number of shots must be an integer >= 1, got {value!r}"
    return None


def _folder_problem(value: Any) -> str | None:
    if not isinstance(value, str) or not value:
        return "expected a folder path (class layout: one sub-folder per class)"
    if not Path(value).expanduser().is_dir():
        return f"folder not found: {value} (relative paths are read from where you run bloodlib)"
    return None


#: Parameters naming a folder: checked from the caller's working directory, then passed to
#: the notebook as an absolute path (its kernel runs in the notebooks' folder).
FOLDER_PARAMETERS = ("other_lab",)

#: Ranges of the study's parameters, by name (whichever notebook declares them). Types come
#: from each notebook's parameters cell; these rules add what a type cannot say.
PARAMETER_RULES: dict[str, Rule] = {
    "seed": Rule("NumPy and TensorFlow seeds are non-negative integers", minimum=0),
    "epochs_head": Rule("a number of epochs (0 skips the head phase)", minimum=0),
    "epochs_finetune": Rule("a number of epochs (0 skips fine-tuning)", minimum=0),
    "batch_size": Rule("a batch holds at least one image", minimum=1),
    "learning_rate_head": Rule("a learning rate must be positive", above=0),
    "learning_rate_finetune": Rule("a learning rate must be positive", above=0),
    "label_smoothing": Rule("a fraction of the target mass, 0 (off) up to below 1", 0, below=1),
    "ema_momentum": Rule("the average's momentum, 0 (off) up to below 1", 0, below=1),
    "warmup_epochs": Rule("epochs of learning-rate warm-up in phase 2 (0: none)", minimum=0),
    "unfreeze_from_block": Rule("a block index (0 unfreezes the whole backbone)", minimum=0),
    "image_size": Rule(
        "pixels per side: ImageNet backbones need at least 32; null is each backbone's native",
        minimum=32,
        nullable=True,
    ),
    "crop": Rule(
        "the centre fraction of the frame's side the network sees; 1.0: the whole frame",
        above=0,
        maximum=1,
    ),
    "max_train_images": Rule("a cap on training images; null uses all", minimum=1, nullable=True),
    "n_boot": Rule("bootstrap resamples for confidence intervals", minimum=1),
    "n_seeds": Rule(
        "training runs per model (seeds seed .. seed + n_seeds - 1, one split); 1: one run",
        minimum=1,
    ),
    "svm_cv": Rule("cross-validation needs at least two folds", minimum=2),
    "split_fractions": Rule("(train, val, test) fractions of the data", check=_fractions_problem),
    "backbones": Rule("backbones of bloodlib.models.backbones.REGISTRY", check=_names_problem),
    "shots": Rule("labelled cells per class for adapting, each at least 1", check=_shots_problem),
    "unlabelled_shots": Rule(
        "labelled cells per class for adapting with the lab's unlabelled cells too; [] skips",
        check=lambda v: _shots_problem(v, empty_ok=True),
    ),
    "adapt_repeats": Rule("draws of support cells per number of shots", minimum=1),
    "other_lab": Rule(
        "a folder of another lab's cells in the class layout; null: a synthetic lab",
        nullable=True,
        check=_folder_problem,
    ),
}

#: Marks "the profile does not set this parameter" (None is a value a profile can give).
_ABSENT: Any = object()

_TYPE_NAMES = {bool: "a boolean", int: "an integer", float: "a number", str: "a string"}
_TYPE_NAMES.update({list: "a list", dict: "a mapping"})


def _type_name(kind: type) -> str:
    return _TYPE_NAMES.get(kind, kind.__name__)


def _type_ok(value: Any, kind: type) -> bool:
    if kind is bool:
        return isinstance(value, bool)
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if kind is float:  # an integer is a fine float: -p learning_rate_head=1
        return isinstance(value, int | float) and not isinstance(value, bool)
    return isinstance(value, kind)


def check_parameter(
    where: str,
    key: str,
    value: Any,
    default: Any = None,
    has_default: bool = False,
    profile_value: Any = _ABSENT,
) -> None:
    """Raise :class:`ParameterError` unless ``value`` fits ``key``'s type and rule.

    The expected type is that of the notebook's default; a ``None`` default takes the
    profile's type, if it gives one. ``None`` is accepted where the default or the profile
    is ``None`` or the rule says it is meaningful.
    """
    rule = PARAMETER_RULES.get(key)
    name = f"{where}.{key}"
    shown = f"{value!r}" if not isinstance(value, str) else f"'{value}'"
    if value is None:
        nullable = rule is not None and rule.nullable
        if (has_default and default is None) or profile_value is None or nullable:
            return
        expected = default if has_default else profile_value
        if expected is _ABSENT:
            return  # nothing says what type this parameter has
        raise ParameterError(
            f"parameter {name} = null: expected {_type_name(type(expected))} "
            f"(the default is {expected!r}); pass a value, e.g. -p {name}={expected}"
        )
    reference = default if has_default and default is not None else profile_value
    if reference is _ABSENT:
        reference = None
    if reference is not None and not _type_ok(value, type(reference)):
        raise ParameterError(
            f"parameter {name} = {shown}: expected {_type_name(type(reference))} "
            f"(like the default {reference!r}), got {_type_name(type(value))}. "
            f"Fix the value, e.g. -p {name}={reference!r}"
        )
    if rule is None:
        return
    problem = rule.check(value) if rule.check else None
    numeric = isinstance(value, int | float) and not isinstance(value, bool)
    bounded = (rule.minimum, rule.above, rule.below, rule.maximum) != (None,) * 4
    if problem is None and bounded and not numeric:
        # A None default gives no type to check against; a bounded rule still means a number.
        problem = f"must be a number, not {_type_name(type(value))}"
    elif problem is None and numeric:
        if not math.isfinite(value):
            problem = "must be a finite number"
        elif rule.minimum is not None and value < rule.minimum:
            problem = f"must be >= {rule.minimum}"
        elif rule.above is not None and value <= rule.above:
            problem = f"must be > {rule.above}"
        elif rule.below is not None and value >= rule.below:
            problem = f"must be < {rule.below}"
        elif rule.maximum is not None and value > rule.maximum:
            problem = f"must be <= {rule.maximum}"
    if problem:
        raise ParameterError(f"parameter {name} = {shown} {problem} ({rule.why})")


def check_run_name(name: str) -> str:
    """``name`` if it names one folder directly inside the runs folder, else ParameterError."""
    bad = (
        not name
        or name != name.strip()
        or name.startswith(".")  # ".", ".." and hidden folders
        or any(sep in name for sep in ("/", "\\", os.sep, os.altsep or "/", "\0"))
        or Path(name).is_absolute()
    )
    if bad:
        raise ParameterError(
            f"bad run name {name!r}: --name must name one folder inside the runs folder "
            "(not empty, no '/' or '\\', not '..', not hidden, not absolute), e.g. --name "
            "my-run. Use --runs-root to put runs elsewhere."
        )
    return name


def run_dir_for(runs_root: str | os.PathLike, name: str | None, profile: str) -> Path:
    """The run folder ``runs_root/NAME`` (absolute), refusing names that would leave it."""
    root = Path(runs_root).resolve()
    run_dir = (root / check_run_name(name if name is not None else profile)).resolve()
    if run_dir.parent != root:  # e.g. a symlink named like a run
        raise ParameterError(f"run folder {run_dir} is not inside {root}; choose another --name")
    return run_dir


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
        from_profile = {**prof_flat, **(prof_nb.get(path.stem) or {})}
        merged: dict[str, Any] = dict(from_profile)
        for layer in (file_flat, file_nb.get(path.stem)):
            merged.update(layer or {})
        merged.update(over_flat)
        merged.update(over_nb.get(path.stem, {}))
        merged["data"] = data_value
        merged["run_dir"] = run_dir_value
        params = {k: v for k, v in merged.items() if k in declared or k in ALWAYS_PASSED}
        bad = user_keys[path.stem] - set(declared) - set(ALWAYS_PASSED)
        if bad:
            raise RunError(f"{path.stem} has no parameter(s) {sorted(bad)}; it declares {declared}")
        defaults = notebook_defaults(path)
        for key, value in params.items():
            if key not in ALWAYS_PASSED:  # chosen by the runner, checked above
                check_parameter(
                    path.stem,
                    key,
                    value,
                    defaults.get(key),
                    key in defaults,
                    from_profile.get(key, _ABSENT),
                )
        for key in FOLDER_PARAMETERS:
            if isinstance(params.get(key), str):  # the kernel runs elsewhere: pass it absolute
                params[key] = str(Path(params[key]).expanduser().resolve())
        plans.append(NotebookPlan(path.stem, path, declared, params, kernel, defaults))

    # A typo in --params/-p would otherwise be dropped silently.
    unknown = user_keys[""] - declared_anywhere - set(ALWAYS_PASSED)
    if unknown:
        raise RunError(
            f"unknown parameter(s) {sorted(unknown)}: no notebook declares them "
            f"(declared: {sorted(declared_anywhere)})"
        )
    return plans


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


class RunLock:
    """An exclusive lock on a run folder: ``run_dir/.lock`` holds PID, host and start time.

    ``fcntl.flock`` does the locking, so the kernel releases it when its holder dies: a lock
    file left by a killed run is simply taken over; its content only names the holder.
    """

    def __init__(self, run_dir: Path) -> None:
        self.path = Path(run_dir) / LOCK_NAME
        self._fd: int | None = None

    def holder(self) -> dict[str, Any]:
        """The recorded holder (may be empty while it is being written)."""
        for _ in range(20):  # the holder writes its line right after taking the lock
            try:
                text = self.path.read_text(encoding="utf-8")
                if text.strip():
                    return json.loads(text)
            except (OSError, ValueError):
                pass
            time.sleep(0.05)
        return {}

    def _refuse(self) -> NoReturn:
        who = self.holder()
        raise RunLockedError(
            f"run folder {self.path.parent} is in use by PID {who.get('pid', '?')} "
            f"on {who.get('host', '?')} since {who.get('since', '?')}. Wait for that "
            "run to finish (or stop it), or choose another --name."
        ) from None

    def check_free(self) -> None:
        """Raise :class:`RunLockedError` now if a live process holds the lock; create nothing.

        Lets a second run refuse in a blink, before the seconds of planning a run; the lock
        is still taken (and checked again) by :meth:`acquire`.
        """
        try:
            fd = os.open(self.path, os.O_RDONLY)
        except FileNotFoundError:
            return
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            self._refuse()
        finally:
            os.close(fd)  # also drops the shared lock

    def acquire(self) -> RunLock:
        """Take the lock or raise :class:`RunLockedError` at once, naming the holder."""
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                self._refuse()
            # Someone may have replaced the file between our open and flock: lock the one
            # that is there now.
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        record = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "since": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(record) + "\n").encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is None:
            return
        try:
            os.ftruncate(self._fd, 0)  # no stale holder named once released
        finally:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def clean_stale_temporaries(run_dir: Path) -> list[Path]:
    """Remove hidden temporary files that a killed run left behind (call under the lock).

    Atomic writes (:func:`bloodlib.core.io.atomic_path`) write ``.NAME.XXXX`` beside their target
    and rename it on success; a killed process never renames nor removes it.
    """
    removed = []
    folders = {run_dir} | {where for pattern in TEMP_FOLDERS for where in run_dir.glob(pattern)}
    for where in sorted(folders):
        if not where.is_dir():
            continue
        for path in where.iterdir():
            if path.name.startswith(".") and path.name != LOCK_NAME and path.is_file():
                path.unlink(missing_ok=True)
                removed.append(path)
    return removed


@contextmanager
def _kernel_env() -> Iterator[None]:
    """Let kernels import bloodlib from this checkout even without an editable install, and
    run headless (kernels inherit the environment of the process that starts them)."""
    saved = {key: os.environ.get(key) for key in ("PYTHONPATH", "BLOODLIB_HEADLESS")}
    old = saved["PYTHONPATH"]
    os.environ["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT), *([old] if old else [])])
    # Interactive widgets render a static view: nobody clicks in a papermill kernel.
    os.environ["BLOODLIB_HEADLESS"] = "1"
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _ipc_kernel_manager() -> type:
    """A kernel manager that talks to its kernel over Unix sockets (IPC), not loopback TCP.

    Over TCP an ipykernel warns on every start that its traffic is unencrypted, and any local
    user could connect to it; IPC sockets are files with the user's permissions. Falls back to
    the default where Unix sockets do not exist (Windows).
    """
    from jupyter_client.manager import AsyncKernelManager

    if os.name != "posix":
        return AsyncKernelManager

    class IPCKernelManager(AsyncKernelManager):
        def __init__(self, **kwargs: Any) -> None:
            kwargs.setdefault("transport", "ipc")
            # jupyter_client's default socket names ("kernel-ipc-1"...) are relative to the
            # working directory, the notebooks folder: a killed run left them there, in the
            # user's file browser. A private folder (mode 0700) per kernel, short enough for
            # a socket path, keeps them out of it; a clean shutdown removes it.
            if kwargs["transport"] == "ipc" and "ip" not in kwargs:
                self._socket_dir = tempfile.mkdtemp(prefix="bloodlib-kernel-")
                kwargs["ip"] = os.path.join(self._socket_dir, "ipc")
            super().__init__(**kwargs)

        async def _async_cleanup_resources(self, restart: bool = False) -> None:
            await super()._async_cleanup_resources(restart=restart)
            folder = getattr(self, "_socket_dir", None)
            if folder and not restart:  # a restarted kernel binds in the same folder
                shutil.rmtree(folder, ignore_errors=True)

    return IPCKernelManager


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
                kernel_manager_class=_ipc_kernel_manager(),
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
    from bloodlib.models import backbones

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
    # Everything is checked before the first write: the name, the parameters, the weights.
    run_dir = run_dir_for(runs_root, name, profile)
    RunLock(run_dir).check_free()  # a busy run folder is the quickest refusal
    plans = plan_study(profile, data, overrides, params_file, run_dir, notebooks_dir)
    check_weights(plans)
    from bloodlib.study import provenance

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
        with _kernel_env():
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
    from bloodlib.study import provenance

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
