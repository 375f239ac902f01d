"""Keep TensorFlow's load-time C++ log lines out of notebooks and terminals.

``TF_CPP_MIN_LOG_LEVEL`` filters TensorFlow's own log calls, but the shared libraries log
through Abseil while they load, before anything calls ``absl::InitializeLog()``; Abseil then
writes every message to file descriptor 2 whatever its level, and it reads no environment
variable. Measured with TF 2.21 and ``TF_CPP_MIN_LOG_LEVEL=2``: each ``import tensorflow``
printed "WARNING: All log messages before absl::InitializeLog() is called are written to
STDERR" and an INFO line about oneDNN, twice.

:func:`install` wraps the first import of ``tensorflow`` so that file descriptor 2 goes to a
temporary file while the module loads; afterwards every captured line is written back to
stderr except the Abseil lines below ``TF_CPP_MIN_LOG_LEVEL`` (the same rule TensorFlow
applies to its own logs) and Abseil's pre-initialisation notice. Errors, tracebacks and
anything else still show. oneDNN itself stays on: only its notice is dropped.
"""

from __future__ import annotations

import contextlib
import importlib.abc
import importlib.machinery
import os
import re
import sys
import tempfile
from collections.abc import Iterator, Sequence

#: Abseil's notice that it has not been initialised yet: says nothing to a user.
ABSL_PREINIT_NOTICE = (
    "All log messages before absl::InitializeLog() is called are written to STDERR"
)

# An Abseil/glog line: severity letter, MMDD, time, thread id, file:line].
_ABSL_LINE = re.compile(r"^([IWEF])\d{4} \d\d:\d\d:\d+\.\d+\s+\d+ [^\]\s]+:\d+\] ")
# The first line of a Python warning or traceback: never part of a C++ log message.
_PYTHON_REPORT = re.compile(
    r"^(Traceback \(most recent call last\)|\S.*:\d+: \w*(Warning|Error)\b)"
)
# TF_CPP_MIN_LOG_LEVEL: 0 shows all, 1 hides INFO, 2 hides WARNING too, 3 hides ERROR too.
_SEVERITY = {"I": 0, "W": 1, "E": 2, "F": 3}
# TensorFlow Lite's own minimal logger ("INFO: Created TensorFlow Lite XNNPACK delegate for
# CPU."), one line per message; same severities.
_TFLITE_LINE = re.compile(r"^(INFO|WARNING|ERROR): ")


def min_log_level() -> int:
    """``TF_CPP_MIN_LOG_LEVEL`` as an int (0 when unset or not a number)."""
    try:
        return int(os.environ.get("TF_CPP_MIN_LOG_LEVEL", "0"))
    except ValueError:
        return 0


def filter_lines(lines: Sequence[str], level: int) -> list[str]:
    """The lines a user should see at ``TF_CPP_MIN_LOG_LEVEL=level``.

    Dropped: Abseil lines whose severity is below ``level``, the lines that continue them
    (up to a blank line, another Abseil line or a Python warning/traceback), and Abseil's
    pre-initialisation notice. Everything else is kept, in order.
    """
    kept: list[str] = []
    dropping = False
    for line in lines:
        match = _ABSL_LINE.match(line)
        if match:
            dropping = _SEVERITY[match.group(1)] < level
        elif ABSL_PREINIT_NOTICE in line:
            dropping = level > 0
        elif tflite := _TFLITE_LINE.match(line):
            dropping = _SEVERITY[tflite.group(1)[0]] < level
        elif not line.strip():
            if dropping:  # the blank line that closes a dropped message goes with it
                dropping = False
                continue
        elif _PYTHON_REPORT.match(line):
            dropping = False
        if not dropping:
            kept.append(line)
    return kept


@contextlib.contextmanager
def filtered_stderr(level: int | None = None) -> Iterator[None]:
    """Capture file descriptor 2 (C++ writes there directly) and write back what
    :func:`filter_lines` keeps when the block ends, even if it raised."""
    level = min_log_level() if level is None else level
    if level <= 0:
        yield
        return
    try:
        sys.stderr.flush()
    except (AttributeError, ValueError):  # no usable stderr object: nothing to flush
        pass
    try:
        capture = tempfile.TemporaryFile(mode="w+b")
    except OSError:  # no temp space: import unfiltered rather than fail
        yield
        return
    try:
        saved = os.dup(2)
    except OSError:  # no file descriptor 2 to filter
        capture.close()
        yield
        return
    with capture:
        os.dup2(capture.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            capture.seek(0)
            text = capture.read().decode("utf-8", errors="replace")
            kept = filter_lines(text.splitlines(keepends=True), level)
            if kept and sys.stderr is not None:
                sys.stderr.write("".join(kept))
                sys.stderr.flush()


class _Loader(importlib.abc.Loader):
    """Runs the real loader of ``tensorflow`` inside :func:`filtered_stderr`."""

    def __init__(self, loader: importlib.abc.Loader) -> None:
        self._loader = loader

    def create_module(self, spec):  # noqa: ANN001 - importlib protocol
        return self._loader.create_module(spec)

    def exec_module(self, module) -> None:  # noqa: ANN001 - importlib protocol
        with filtered_stderr():
            self._loader.exec_module(module)


class _Finder(importlib.abc.MetaPathFinder):
    """Finds ``tensorflow`` like the normal path finder would, with a quieter loader."""

    def find_spec(self, name, path, target=None):  # noqa: ANN001 - importlib protocol
        if name != "tensorflow":
            return None
        sys.meta_path[:] = [f for f in sys.meta_path if f is not self]  # once only
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is not None and spec.loader is not None:
            spec.loader = _Loader(spec.loader)
        return spec


def install() -> None:
    """Quiet the first ``import tensorflow`` from now on; a no-op once TF is imported."""
    if "tensorflow" in sys.modules or any(isinstance(f, _Finder) for f in sys.meta_path):
        return
    sys.meta_path.insert(0, _Finder())
