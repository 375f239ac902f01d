"""Content hashes: the one place bloodlib turns bytes, files and tables into SHA-256 digests.

Digests key caches (manifests, features, converted weights), bind sidecars to models, and
fingerprint splits and labs; a digest's exact bytes matter, so each shape is built here once.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file's content, read in chunks: the one content hash bloodlib uses."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def sha256_text(text: str) -> str:
    """Hex SHA-256 of a string's UTF-8 bytes."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def sha256_rows(rows: Iterable[Iterable[object]]) -> str:
    """Hex SHA-256 over rows, each written as tab-separated fields and a newline, in order.

    Callers sort the rows when their order is not part of what they identify.
    """
    h = hashlib.sha256()
    for row in rows:
        h.update(("\t".join(str(v) for v in row) + "\n").encode("utf-8"))
    return h.hexdigest()
