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
    import papermill  # lazy: it costs seconds, and planning must refuse a bad run at once

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


@dataclass
class _Layers:
    """The parameters a run stacks, lowest first: the profile, ``--params``, ``-p``; each
    split into keys for every notebook (``flat``) and keys for one (``by_notebook``)."""

    profile: tuple[dict[str, Any], dict[str, dict[str, Any]]]
    file: tuple[dict[str, Any], dict[str, dict[str, Any]]]
    cli: tuple[dict[str, Any], dict[str, dict[str, Any]]]

    def for_notebook(self, nb: str) -> tuple[dict[str, Any], dict[str, Any]]:
        """(what the profile gives ``nb``, everything merged for ``nb``)."""
        from_profile = {**self.profile[0], **(self.profile[1].get(nb) or {})}
        merged = dict(from_profile)
        for flat, scoped in (self.file, self.cli):
            merged.update(flat)
            merged.update(scoped.get(nb) or {})
        return from_profile, merged

    def user_keys(self, nb: str | None = None) -> set[str]:
        """Keys the user set (not the profile): for every notebook, or scoped to ``nb``."""
        if nb is None:
            return set(self.file[0]) | set(self.cli[0])
        return set(self.file[1].get(nb, {})) | set(self.cli[1].get(nb, {}))


def _layers(
    profile: str,
    overrides: Mapping[str, Any] | None,
    params_file: str | os.PathLike | None,
    profiles_file: Path,
) -> _Layers:
    profiles = load_profiles(profiles_file)
    if profile not in profiles:
        raise RunError(f"unknown profile {profile!r}; choose one of {list(profiles)}")
    prof = profiles[profile]
    from_profile = split_layer(
        {"common": prof.get("common"), "notebooks": prof.get("notebooks")}, f"profile {profile!r}"
    )
    from_file: tuple[dict[str, Any], dict[str, dict[str, Any]]] = ({}, {})
    if params_file is not None:
        try:
            layer = yaml.safe_load(Path(params_file).read_text(encoding="utf-8")) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise RunError(f"cannot read parameters file {params_file}: {exc}") from exc
        if not isinstance(layer, dict):
            raise RunError(f"{params_file}: expected a mapping of parameters")
        from_file = split_layer(layer, str(params_file))
    from_cli = split_layer(dict(overrides or {}), "-p")
    user = (from_file[0], from_cli[0], *from_file[1].values(), *from_cli[1].values())
    if any("run_dir" in layer for layer in user):
        raise RunError("run_dir is chosen by the runner: use --name and --runs-root instead")
    return _Layers(from_profile, from_file, from_cli)


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
    layers = _layers(profile, overrides, params_file, profiles_file)
    # data is one value for the whole run, so only unscoped layers may set it. Checked first:
    # a wrong --data is the most likely mistake and the cheapest to report.
    spec = layers.profile[0].get("data")
    for flat, _ in (layers.file, layers.cli):
        spec = flat.get("data", spec)
    if data is not None:
        spec = os.fspath(data)
    runner_values = {
        "data": _resolve_data(spec, profile),
        "run_dir": str(Path(run_dir).resolve()) if run_dir else None,
    }
    paths = find_notebooks(notebooks_dir)
    names = [p.stem for p in paths]
    # The profile may describe notebooks absent here (e.g. a test folder): not an error.
    check_scoped(layers.file[1], names, str(params_file))
    check_scoped(layers.cli[1], names, "-p")
    plans = [_plan(path, layers, runner_values) for path in paths]
    # A typo in --params/-p would otherwise be dropped silently.
    declared_anywhere = {key for plan in plans for key in plan.declared}
    unknown = layers.user_keys() - declared_anywhere - set(ALWAYS_PASSED)
    if unknown:
        raise RunError(
            f"unknown parameter(s) {sorted(unknown)}: no notebook declares them "
            f"(declared: {sorted(declared_anywhere)})"
        )
    return plans


def _plan(path: Path, layers: _Layers, runner_values: Mapping[str, Any]) -> NotebookPlan:
    """One notebook's plan: the declared parameters it gets, each checked against its rule."""
    declared, kernel = _declared(path)
    from_profile, merged = layers.for_notebook(path.stem)
    merged.update(runner_values)
    params = {k: v for k, v in merged.items() if k in declared or k in ALWAYS_PASSED}
    bad = layers.user_keys(path.stem) - set(declared) - set(ALWAYS_PASSED)
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
    return NotebookPlan(path.stem, path, declared, params, kernel, defaults)


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
    from bloodlib.models import backbones  # lazy: it imports Keras, which planning never needs

    problems = []
    for name, weights in wanted.items():
        try:
            backbones.resolve_weights(backbones.get(name), weights)
        except (backbones.BackboneWeightsError, KeyError) as exc:
            problems.append(str(exc).strip("'\""))
    if problems:
        raise RunError("\n\n".join(problems))
