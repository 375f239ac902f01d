"""Executing one notebook with papermill: the kernel's environment, its private sockets,
and a failed notebook kept beside the run for the user to read.

papermill and jupyter_client are imported inside the functions that use them: they cost
seconds, and the CLI must start at once.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from bloodlib.core.config import REPO_ROOT
from bloodlib.core.io import atomic_path
from bloodlib.study.planning import NotebookPlan
from bloodlib.study.profiles import (
    RunError,
)


@contextmanager
def kernel_environment() -> Iterator[None]:
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
    from jupyter_client.manager import AsyncKernelManager  # lazy: see the module docstring

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


#: The tag of an exercise's solution cell: the committed notebooks hold them executed (nbval
#: runs them in CI); a study run leaves them out, so a class's run pays only for the lesson.
SOLUTION_TAG = "solution"


def without_solutions(path: Path) -> Any:
    """The notebook at ``path`` without its solution cells (:data:`SOLUTION_TAG`)."""
    import nbformat  # lazy: see the module docstring

    nb = nbformat.read(path, as_version=4)
    nb.cells = [c for c in nb.cells if SOLUTION_TAG not in c.metadata.get("tags", [])]
    return nb


def execute_notebook(
    plan: NotebookPlan,
    output: Path,
    kernel: str | None,
    cwd: Path,
    progress: bool,
) -> None:
    """Execute one notebook into ``output`` atomically; keep a partial one on failure."""
    import papermill  # lazy: see the module docstring

    failed = output.with_name(f"{plan.name}.failed.ipynb")
    with atomic_path(output) as tmp:
        try:
            papermill.execute_notebook(
                without_solutions(plan.path),
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
