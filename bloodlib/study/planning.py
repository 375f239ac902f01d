"""What each notebook of a run will be given: the study's notebooks, their declared
parameters, and the merged, checked values (:func:`plan_study`); nothing runs here.
"""

from __future__ import annotations

import ast
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from bloodlib.core.config import NOTEBOOKS_DIR
from bloodlib.data.source import KEYWORDS as DATA_KEYWORDS
from bloodlib.study.parameters import (
    ABSENT,
    FOLDER_PARAMETERS,
    check_parameter,
)
from bloodlib.study.profiles import (
    PROFILES_FILE,
    DataSpecError,
    RunError,
    check_scoped,
    load_profiles,
    split_layer,
)

#: The study is every notebook named like ``01_something.ipynb``, run in name order.
NOTEBOOK_GLOB = "[0-9][0-9]_*.ipynb"


#: Injected into every notebook whether or not its parameters cell declares them.
ALWAYS_PASSED = ("run_dir", "data")


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
    prof_flat, prof_nb = split_layer(
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
        file_flat, file_nb = split_layer(layer, str(params_file))
    over_flat, over_nb = split_layer(dict(overrides or {}), "-p")
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
    check_scoped(file_nb, names, str(params_file))
    check_scoped(over_nb, names, "-p")
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
                    from_profile.get(key, ABSENT),
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
