"""Where the real data of the `data` tier lives: one place for the tests' paths.

``../shared/data`` beside the repository (as laid for developers and CI); tests that need it
skip, saying so, where it is absent. ``BLOODLIB_DEV_DATA`` points the dev-image tests elsewhere.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
#: 6,837 of PBC's 17,092 images, defects included (read-only).
DEV_DIR = SHARED_DATA / "pbc-dev" / "PBC_dataset_normal_DIB"
#: 300 white cells of another lab, 5 classes (read-only; never copied into the repository).
TECOM = SHARED_DATA / "external-dev" / "tecom"


def dev_dir() -> Path:
    """The dev images, or skip the test with the reason."""
    for candidate in (DEV_DIR, os.environ.get("BLOODLIB_DEV_DATA")):
        if candidate and Path(candidate).is_dir():
            return Path(candidate)
    pytest.skip(f"dev data absent: neither {DEV_DIR} nor $BLOODLIB_DEV_DATA is a folder")
