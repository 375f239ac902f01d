"""One process at a time per run folder, and the temporary files a killed run leaves."""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, NoReturn

from bloodlib.core.errors import RunLockedError

#: The run folder's lock file: PID, host and start time of the process running it.
LOCK_NAME = ".lock"


#: Folders of a run (glob patterns, besides the run folder itself) where atomic writes leave
#: hidden temporary files if the run is killed: notebooks, state, models, figures, training
#: logs and their backups.
TEMP_FOLDERS = ("notebooks", ".state", "models", "figures", "train/*", "train/*/backup_*")


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
