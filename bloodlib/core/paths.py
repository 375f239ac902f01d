"""The one set of rules every command checks before it writes a file: an output never
replaces an input, never lands inside a folder being read, and replaces an existing file
only when it is an earlier output of the same work, or when the user says ``--force``.

Paths are compared resolved, so a relative path, ``..`` or a symbolic link onto an input is
caught too. Each rule raises :class:`~bloodlib.core.errors.OutputPathError` saying what to do.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path

from bloodlib.core.errors import OutputPathError


def check_output(
    out: str | os.PathLike,
    *,
    writes: Iterable[str | os.PathLike] = (),
    inputs: Iterable[str | os.PathLike] = (),
    role: str = "input",
    folders: Mapping[str, str | os.PathLike | None] | None = None,
    suffix: str | None = None,
    what: str = "the output",
) -> Path:
    """``out`` (and the other files written beside it, ``writes``, such as a sidecar), checked:

    - ``suffix``: the name ends in it (a model's format, ``.csv``);
    - ``inputs`` (files read: a model, its sidecar; ``role`` names them in messages): none is
      among the files written, and none lies inside ``out`` (a folder output);
    - ``folders`` (folders read, by what they are: "folder being classified" -> path):
      ``out`` is not inside any;
    - ``out``'s folder can be created and written.

    Returns ``out`` as a :class:`~pathlib.Path`; creates its parent folder.
    """
    out = Path(out)
    if suffix is not None and out.suffix.lower() != suffix:
        raise OutputPathError(
            f"--out {out}: {what} is saved as a {suffix} file; end the name in {suffix}"
        )
    written = {Path(p).resolve() for p in (out, *writes)}
    target = out.resolve()
    for p in inputs:
        source = Path(p).resolve()
        if source in written:
            raise OutputPathError(
                f"--out {out} would overwrite the {role} {Path(p).name} or its sidecar: give "
                "the output another name"
            )
        if target in source.parents:
            raise OutputPathError(f"--out {out} is a folder that holds the {role} {Path(p).name}")
    for name, where in (folders or {}).items():
        if where is None:
            continue
        root = Path(where).resolve()
        if target == root or root in target.parents:
            raise OutputPathError(
                f"--out {out} is inside the {name} ({where}): it could replace an input and "
                "would be read as one next time; write it outside that folder"
            )
    parent = target.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputPathError(
            f"cannot create the folder for --out {out}: {exc.strerror or exc}"
        ) from exc
    if not os.access(parent, os.W_OK | os.X_OK):
        raise OutputPathError(f"cannot write --out {out}: its folder is not writable")
    return out


def check_replace(
    out: str | os.PathLike,
    *,
    ours: bool,
    force: bool,
    what: str,
    sidecar: str | os.PathLike | None = None,
) -> None:
    """An existing ``out`` (or its ``sidecar``) is replaced only when ``ours`` (an earlier
    output of this very work: re-running a command is safe) or with ``force``; a symbolic
    link or a non-file in the way is always refused."""
    out = Path(out)
    for p in (out, *(() if sidecar is None else (Path(sidecar),))):
        if p.is_symlink():
            raise OutputPathError(f"{p} is a symbolic link; give a plain path")
        if p.exists() and not p.is_file():
            raise OutputPathError(f"{p} exists and is not a file; choose another name")
    exists = out.exists() or (sidecar is not None and Path(sidecar).exists())
    if exists and not ours and not force:
        raise OutputPathError(
            f"--out {out} already exists and is not {what}; add --force to replace it, "
            "or choose another name"
        )
