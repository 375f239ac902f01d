"""The command line: ``python -m bloodlib <command>`` (also installed as ``bloodlib``).

:mod:`~bloodlib.cli.parser` names every command's options, :mod:`~bloodlib.cli.commands`
does the work, and :func:`main` turns a user's mistake into one readable paragraph: an error
bloodlib can explain (:class:`~bloodlib.core.errors.BloodlibError`, a bad path) exits with
its message, a bug shows its traceback.
"""

from __future__ import annotations

import sys
import textwrap
import zipfile
from collections.abc import Sequence

from bloodlib.cli.commands import CliError
from bloodlib.cli.parser import build_parser
from bloodlib.core.errors import BloodlibError

__all__ = ["build_parser", "main"]


def _one_paragraph(message: str) -> str:
    """``error: ...`` wrapped at 100 columns; line breaks the message chose are kept."""
    lines = [" ".join(line.split()) for line in str(message).strip().splitlines()] or [""]
    lines[0] = f"error: {lines[0] or 'unknown error'}"
    return "\n".join(
        textwrap.fill(line, width=100, break_long_words=False, break_on_hyphens=False)
        for line in lines
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    debug = getattr(args, "debug", False)
    try:
        return args.func(args)
    except KeyboardInterrupt:
        if debug:
            raise
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        if isinstance(exc, BloodlibError):
            code = exc.exit_code
        elif isinstance(exc, ModuleNotFoundError) and (exc.name or "").startswith("bloodlib"):
            code, exc = 1, CliError(f"{exc.name} is not available in this checkout ({exc})")
        elif isinstance(exc, OSError | ValueError | zipfile.BadZipFile) or (
            type(exc).__module__.startswith("bloodlib.")
        ):
            code = 2  # the data layer reports bad input with these
        else:
            raise  # a bug: the traceback is the useful message
        if debug:
            raise
        print(_one_paragraph(str(exc)), file=sys.stderr)
        print("(run with --debug for the traceback)", file=sys.stderr)
        return code
