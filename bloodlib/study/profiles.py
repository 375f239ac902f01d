"""The run profiles (``profiles.yml``) and the layers of parameters a run stacks on them.

A profile names the data and each notebook's parameters; ``extends: BASE`` lists only what it
changes. A run stacks, lowest first: the profile, ``--params FILE.yml``, then ``-p KEY=VALUE``
(``NOTEBOOK.KEY`` scopes one to a notebook). Reads YAML only: the CLI lists the profiles
for ``--help`` without importing NumPy.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from bloodlib.core.errors import BloodlibError

PROFILES_FILE = Path(__file__).with_name("profiles.yml")


class RunError(BloodlibError):
    """A run cannot start or a notebook failed; the message is meant for the user."""

    exit_code = 1


class DataSpecError(RunError):
    """The data specification is missing or points nowhere."""

    exit_code = 2


class ParameterError(RunError):
    """A parameter of the wrong type or out of range, or a run name that leaves the runs folder."""

    exit_code = 2


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


def split_layer(
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


def check_scoped(scoped: Mapping[str, Any], notebooks: list[str], origin: str) -> None:
    unknown = set(scoped) - set(notebooks)
    if unknown:
        raise RunError(f"{origin}: no notebook named {sorted(unknown)}; the study has {notebooks}")
