"""Where the images come from: the embedded sample, a folder, a zip, or the official download.

Every source ends as a folder in class layout (one sub-folder per class), which
is what :func:`resolve` returns. Zips are extracted once into the cache and
never touched again; user folders are only read.
"""

from __future__ import annotations

import http.client
import os
import shutil
import stat
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
import warnings
import zipfile
from collections.abc import Iterator
from pathlib import Path, PurePosixPath

from bloodlib import CLASSES, IMAGE_SUFFIXES
from bloodlib.core.config import SAMPLE_DIR, cache_dir
from bloodlib.core.errors import BloodlibError
from bloodlib.core.hashing import sha256_file, sha256_rows, sha256_text
from bloodlib.core.io import read_json, write_json
from bloodlib.core.progress import tqdm
from bloodlib.data.files import class_of

#: The official "download all" zip of Mendeley Data snkd93bnjr v1.
DEFAULT_URL = "https://md-datasets-cache-zipfiles-prod.s3.eu-west-1.amazonaws.com/snkd93bnjr-1.zip"
URL_ENV = "BLOODLIB_PBC_URL"
LANDING_PAGE = "https://data.mendeley.com/datasets/snkd93bnjr/1"

#: Images per class in the full public release (Acevedo et al. 2020, Table 1).
EXPECTED_COUNTS: dict[str, int] = {
    "basophil": 1218,
    "eosinophil": 3117,
    "erythroblast": 1551,
    "ig": 2895,
    "lymphocyte": 1214,
    "monocyte": 1420,
    "neutrophil": 3329,
    "platelet": 2348,
}

#: Stall timeout: connecting, or waiting for the next bytes of a download, longer than this
#: fails the attempt (the partial file is kept for the next run).
CONNECT_TIMEOUT_S = 10.0
#: Overall deadline of one download attempt, however the bytes arrive: a server trickling one
#: byte every few seconds never trips the stall timeout. The release (~270 MB) needs only an
#: average 40 KB/s to finish in 2 hours; a slower attempt stops, keeps its ``.part``, and the
#: next run resumes it.
DOWNLOAD_DEADLINE_S = 2 * 3600.0
_CHUNK = 1 << 20

#: Zip extraction limits, checked on the zip's directory before anything is written: a zip
#: bomb declares gigabytes in a megabyte. The PBC release holds ~17,100 files, ~270 MB, and
#: Mendeley's bundle wraps it in a second zip; each limit leaves ten times that or more.
MAX_ZIP_FILES = 200_000
MAX_ZIP_BYTES = 4 * 2**30  # total uncompressed
#: JPEGs do not compress (the release's members expand ~1.0x); zip bombs expand 1000x and
#: more. Checked on members above _RATIO_MIN_BYTES: a small text or empty file may compress
#: far better than an image and is harmless.
MAX_ZIP_RATIO = 100
_RATIO_MIN_BYTES = 1 << 20
_DOWNLOAD_SPECS = ("mendeley", "pbc")
_SAMPLE_SPECS = ("sample",)
#: Every named source :func:`resolve` understands (the rest of the specs are paths).
KEYWORDS: tuple[str, ...] = _SAMPLE_SPECS + _DOWNLOAD_SPECS
# How deep to look for the class folders inside a folder or an extracted zip.
_SEARCH_DEPTH = 3


class DataSourceError(BloodlibError, RuntimeError):
    """A data source cannot be resolved; the message says how to fix it."""


class DataSourceWarning(UserWarning):
    """A source resolved but does not look like the full release."""


def _help(reason: str) -> str:
    return (
        f"{reason}\n"
        f"To fix: download the zip by hand from {LANDING_PAGE} and pass "
        "--data /path/to/PBC_dataset_normal_DIB.zip (or the extracted folder), "
        f"or set {URL_ENV} to a reachable copy of the zip."
    )


# --------------------------------------------------------------------------- public API


def resolve(spec: str | os.PathLike | None = None, *, progress: bool = True) -> Path:
    """Return the root folder (class layout) for ``spec``.

    ``None``/``"sample"``: the embedded sample; ``"mendeley"``/``"pbc"``: the
    official zip, downloaded once; a folder: that folder (or its single
    sub-folder holding the classes); a ``.zip``: extracted once into the cache.
    """
    kind, value = _classify(spec)
    if kind == "sample":
        return _class_root(SAMPLE_DIR)
    if kind == "download":
        archive = download(progress=progress)
        digest = sha256_file(archive)
        _check_hash(archive, digest)
        try:
            root = _from_zip(archive, digest, progress=progress)
        except DataSourceError as exc:
            raise DataSourceError(f"{exc}\nIf the download is damaged, delete {archive}.") from exc
        _record_hash(archive, digest)
        return root
    if kind == "folder":
        return _class_root(value)
    return _from_zip(value, sha256_file(value), progress=progress)


def describe(spec: str | os.PathLike | None = None) -> str:
    """One line of provenance for ``spec``, without downloading or extracting anything."""
    kind, value = _classify(spec)
    if kind == "sample":
        return f"sample ({SAMPLE_DIR})"
    if kind == "download":
        url = _url()
        dest = _download_path(url)
        digest = _recorded_hashes().get(dest.name, {}).get("sha256", "not downloaded yet")
        return f"mendeley {url} sha256={digest}"
    if kind == "folder":
        try:
            return f"folder {_class_root(value)}"
        except DataSourceError:
            return f"folder {value} (no class folders)"
    return f"zip {value} sha256={sha256_file(value)}"


def _classify(spec: str | os.PathLike | None) -> tuple[str, Path]:
    """('sample'|'download'|'folder'|'zip', path) for a spec, or DataSourceError."""
    if spec is None:
        return "sample", SAMPLE_DIR
    if isinstance(spec, str) and spec.strip().lower() in _SAMPLE_SPECS:
        return "sample", SAMPLE_DIR
    if isinstance(spec, str) and spec.strip().lower() in _DOWNLOAD_SPECS:
        return "download", Path()
    path = Path(spec).expanduser()
    if path.is_dir():
        return "folder", path.resolve()
    if path.is_file() and (path.suffix.lower() == ".zip" or zipfile.is_zipfile(path)):
        return "zip", path.resolve()
    if path.exists():
        raise DataSourceError(f"{path} is neither a folder nor a .zip file.")
    raise DataSourceError(
        f"no such file or folder: {path}\n"
        "--data takes 'sample', 'mendeley', a folder with one sub-folder per class "
        f"({', '.join(CLASSES)}), or the dataset's .zip."
    )


# --------------------------------------------------------------------------- folders


def _has_classes(folder: Path) -> bool:
    try:
        return any(c.is_dir() and class_of(c.name) is not None for c in folder.iterdir())
    except OSError:
        return False


def _candidates(folder: Path, depth: int) -> list[Path]:
    """Folders up to ``depth`` levels below ``folder`` that hold class sub-folders."""
    if _has_classes(folder):
        return [folder]
    if depth == 0:
        return []
    found: list[Path] = []
    try:
        children = sorted(folder.iterdir())
    except OSError:
        return []
    for child in children:
        if child.is_dir() and not child.name.startswith((".", "__MACOSX")):
            found.extend(_candidates(child, depth - 1))
    return found


def _class_root(folder: Path) -> Path:
    """The folder itself, or the single folder below it that holds the classes."""
    if not folder.is_dir():
        raise DataSourceError(f"no such folder: {folder}")
    found = _candidates(folder, _SEARCH_DEPTH)
    if len(found) == 1:
        return found[0]
    if not found:
        raise DataSourceError(
            f"no class folders in {folder}: expected sub-folders named {', '.join(CLASSES)}."
        )
    listed = "\n  ".join(str(f) for f in found)
    raise DataSourceError(f"several dataset folders under {folder}; pass one of:\n  {listed}")


# --------------------------------------------------------------------------- zips


def _from_zip(archive: Path, digest: str, *, progress: bool) -> Path:
    """Extract ``archive`` once into ``cache/datasets/<sha256[:16]>`` and return its class root."""
    target = cache_dir() / "datasets" / digest[:16]
    first_time = not target.is_dir()
    if first_time:
        _extract_atomically(archive, target, progress=progress)
    root = _class_root_in_extracted(target, progress=progress)
    if first_time:  # warn once, when the zip is new, not on every run
        check_counts(root)
    return root


def _extract_atomically(archive: Path, target: Path, *, progress: bool) -> None:
    """Extract into a temporary sibling, then rename: a half extraction is never seen."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.tmp-"))
    try:
        extract_zip(archive, tmp, progress=progress)
        try:
            os.rename(tmp, target)
        except OSError:
            if not target.is_dir():  # another process may have won the race
                raise
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _class_root_in_extracted(folder: Path, *, progress: bool) -> Path:
    """Class root in an extraction; Mendeley's outer zip may wrap the dataset's own zip."""
    if _candidates(folder, _SEARCH_DEPTH):
        return _class_root(folder)
    inner = sorted(p for p in folder.rglob("*.zip") if "__MACOSX" not in p.parts)
    if len(inner) > 1:  # prefer the dataset's own zip over any extras in a bundle
        inner = [p for p in inner if p.name.lower().startswith("pbc")] or inner
    if len(inner) == 1:
        nested = folder / "nested"
        if not nested.is_dir():
            _extract_atomically(inner[0], nested, progress=progress)
        return _class_root(nested)
    return _class_root(folder)  # raises with the usual message


def extract_zip(archive: Path, dest: Path, *, progress: bool = False) -> int:
    """Extract regular files of ``archive`` into ``dest``; refuse unsafe names (zip slip).

    ``__MACOSX`` resource forks are skipped; returns the number of files written.
    """

    dest = dest.resolve()
    try:
        zf = zipfile.ZipFile(archive)
    except (zipfile.BadZipFile, OSError) as exc:
        raise DataSourceError(f"{archive} is not a readable zip: {exc}") from exc
    written = 0
    with zf:
        members = [m for m in zf.infolist() if not m.is_dir()]
        members = [m for m in members if not _skipped(m)]
        budget = check_zip_limits(archive, members)  # before anything is written
        for info in tqdm(
            members, desc=f"extract {archive.name}", unit="file", disable=not progress
        ):
            target = _safe_target(dest, info.filename)
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                with zf.open(info) as src, open(target, "wb") as out:
                    budget -= _copy_capped(src, out, info.file_size, budget)
            except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError) as exc:
                raise DataSourceError(f"{archive}: cannot extract {info.filename}: {exc}") from exc
            written += 1
    return written


def _skipped(info: zipfile.ZipInfo) -> bool:
    """``__MACOSX`` resource forks, and links (they could point anywhere; the dataset has none)."""
    parts = PurePosixPath(info.filename.replace("\\", "/")).parts
    return not parts or parts[0] == "__MACOSX" or _is_symlink(info)


def check_zip_limits(archive: Path, members: list[zipfile.ZipInfo]) -> int:
    """Refuse a zip bomb from its directory: file count, total size, compression ratio.

    Returns the total uncompressed size, which extraction then may not exceed.
    """
    total = sum(m.file_size for m in members)
    fix = (
        "If this really is the dataset, extract it yourself and pass the folder with --data; "
        "otherwise delete it."
    )
    if len(members) > MAX_ZIP_FILES:
        raise DataSourceError(
            f"{archive} holds {len(members)} files, more than the {MAX_ZIP_FILES} limit "
            f"(source.MAX_ZIP_FILES; the PBC release has ~17,100): not extracted. {fix}"
        )
    if total > MAX_ZIP_BYTES:
        raise DataSourceError(
            f"{archive} would expand to {total / 2**30:.1f} GiB, more than the "
            f"{MAX_ZIP_BYTES / 2**30:.0f} GiB limit (source.MAX_ZIP_BYTES; the PBC release "
            f"is ~0.3 GiB): not extracted. {fix}"
        )
    # The whole archive too: many small members each under the per-member floor still add up
    # (300 members of 1 MiB of zeros: a 0.37 MB zip that writes 301 MB).
    packed = sum(m.compress_size for m in members)
    if total > _RATIO_MIN_BYTES and total > MAX_ZIP_RATIO * max(packed, 1):
        raise DataSourceError(
            f"{archive} expands {total / max(packed, 1):.0f}x as a whole ({packed} -> {total} "
            f"bytes), more than the {MAX_ZIP_RATIO}x limit for images (source.MAX_ZIP_RATIO): "
            f"a zip bomb? Not extracted. {fix}"
        )
    for m in members:
        if m.file_size > _RATIO_MIN_BYTES and m.file_size > MAX_ZIP_RATIO * max(m.compress_size, 1):
            raise DataSourceError(
                f"{archive}: {m.filename!r} expands {m.file_size / max(m.compress_size, 1):.0f}x "
                f"({m.compress_size} -> {m.file_size} bytes), more than the {MAX_ZIP_RATIO}x "
                f"limit for images (source.MAX_ZIP_RATIO): a zip bomb? Not extracted. {fix}"
            )
    return total


def _copy_capped(src, out, declared: int, budget: int) -> int:
    """Copy ``src`` to ``out``; a member longer than it declared (or than the budget) fails."""
    cap = min(declared, budget)
    copied = 0
    for block in iter(lambda: src.read(_CHUNK), b""):
        copied += len(block)
        if copied > cap:
            raise zipfile.BadZipFile(f"holds more than the {declared} bytes it declares")
        out.write(block)
    return copied


def _is_symlink(info: zipfile.ZipInfo) -> bool:
    return stat.S_ISLNK(info.external_attr >> 16)


def _safe_target(dest: Path, name: str) -> Path:
    """Path for a member name inside ``dest``; DataSourceError if it would escape."""
    clean = name.replace("\\", "/")
    parts = PurePosixPath(clean).parts
    if clean.startswith("/") or ".." in parts or (parts and ":" in parts[0]):
        raise DataSourceError(f"refusing unsafe path in zip: {name!r}")
    target = (dest / clean).resolve()
    if not target.is_relative_to(dest):
        raise DataSourceError(f"refusing unsafe path in zip: {name!r}")
    return target


def check_counts(root: Path) -> dict[str, int]:
    """Images per class; warn (never fail) when they differ from the full release."""
    counts = {}
    for cls in CLASSES:
        folder = next((c for c in root.iterdir() if c.is_dir() and c.name.lower() == cls), None)
        counts[cls] = (
            sum(
                1
                for p in folder.iterdir()
                if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_SUFFIXES
            )
            if folder
            else 0
        )
    off = {c: n for c, n in counts.items() if n != EXPECTED_COUNTS[c]}
    if off:
        detail = ", ".join(f"{c} {n} (expected {EXPECTED_COUNTS[c]})" for c, n in off.items())
        warnings.warn(
            f"{root} does not match the full PBC release "
            f"({sum(EXPECTED_COUNTS.values())} images): {detail}",
            DataSourceWarning,
            stacklevel=3,
        )
    return counts


def fingerprint(spec: str | os.PathLike) -> str:
    """A cheap digest of the data ``spec`` names, to re-run notebook 01 when it changes.

    A folder (the embedded sample included) is fingerprinted by its listing (relative paths,
    sizes, modification times: what the manifest cache is keyed by), a zip by its size and
    modification time; a download keyword by its URL (the download is checked against its
    recorded hash when it is made). Nothing is read, downloaded or extracted.
    """
    key = str(spec).strip().lower()
    if key in _DOWNLOAD_SPECS:
        return f"download {_url()}"
    path = SAMPLE_DIR if key in _SAMPLE_SPECS else Path(spec)
    if path.is_dir():
        return sha256_rows(_listing(path))
    try:
        st = path.stat()
    except OSError:
        return sha256_text("missing")
    return sha256_rows([("file", st.st_size, st.st_mtime_ns)])


def _listing(folder: Path) -> Iterator[tuple[str, int | None, int | None]]:
    """``(relpath, size, mtime_ns)`` of every file under ``folder``, in a stable order."""
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames.sort()
        for name in sorted(filenames):
            full = os.path.join(dirpath, name)
            try:
                st = os.stat(full)
            except OSError:  # a dangling link: still part of the listing
                yield os.path.relpath(full, folder), None, None
                continue
            yield os.path.relpath(full, folder), st.st_size, st.st_mtime_ns


# --------------------------------------------------------------------------- download


def _url() -> str:
    return os.environ.get(URL_ENV) or DEFAULT_URL


def _download_path(url: str) -> Path:
    name = PurePosixPath(urllib.parse.unquote(urllib.parse.urlparse(url).path)).name
    return cache_dir() / "downloads" / (name or "pbc.zip")


def _hashes_path() -> Path:
    return cache_dir() / "downloads" / "hashes.json"


def _recorded_hashes() -> dict:
    path = _hashes_path()
    try:
        return read_json(path) if path.is_file() else {}
    except ValueError:
        return {}


def _record_hash(archive: Path, digest: str) -> None:
    """Remember the content hash of a download on its first successful use."""
    hashes = _recorded_hashes()
    if archive.name not in hashes:
        hashes[archive.name] = {"sha256": digest, "bytes": archive.stat().st_size, "url": _url()}
        write_json(_hashes_path(), hashes)


def _check_hash(archive: Path, digest: str) -> None:
    """A download must keep the content hash recorded on first success."""
    known = _recorded_hashes().get(archive.name)
    if known is not None and known.get("sha256") != digest:
        raise DataSourceError(
            f"{archive} has sha256 {digest}, but the first download had {known.get('sha256')}.\n"
            f"The file is damaged or was replaced: delete {archive} (and its entry in "
            f"{_hashes_path()}) and run again to download it afresh."
        )


def download(url: str | None = None, *, progress: bool = True) -> Path:
    """Download ``url`` (default: ``$BLOODLIB_PBC_URL`` or the Mendeley zip) into the cache.

    Writes ``<name>.part`` and resumes it with an HTTP Range request; renames
    on completion. Returns the finished file; fails fast with a DataSourceError
    when offline.
    """
    url = url or _url()
    dest = _download_path(url)
    if dest.is_file():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    try:
        _fetch(url, part, progress=progress, deadline=time.monotonic() + DOWNLOAD_DEADLINE_S)
    except DataSourceError:
        raise
    except urllib.error.HTTPError as exc:
        raise DataSourceError(
            _help(f"download of {url} failed: HTTP {exc.code} {exc.reason}.")
        ) from exc
    except urllib.error.URLError as exc:
        raise DataSourceError(_help(f"cannot reach {url}: {exc.reason}.")) from exc
    except (TimeoutError, ConnectionError, http.client.HTTPException) as exc:
        kept = f" The partial file {part} is kept; run again to resume." if part.exists() else ""
        raise DataSourceError(_help(f"download of {url} failed: {exc!r}.{kept}")) from exc
    os.replace(part, dest)
    return dest


def _fetch(url: str, part: Path, *, progress: bool, deadline: float) -> None:
    """Fill ``part`` with the body of ``url``, resuming from its current size when possible.

    ``deadline`` (a ``time.monotonic()`` value) ends the attempt with a ``TimeoutError``.
    """
    for _ in range(2):  # a second pass only after dropping an unusable .part
        offset = part.stat().st_size if part.is_file() else 0
        request = urllib.request.Request(url, headers={"User-Agent": "bloodlib"})
        if offset:
            request.add_header("Range", f"bytes={offset}-")
        try:
            response = urllib.request.urlopen(request, timeout=CONNECT_TIMEOUT_S)
        except urllib.error.HTTPError as exc:
            if exc.code == 416 and offset:  # range not satisfiable: the .part is stale
                part.unlink()
                continue
            raise
        with response:
            if offset and response.status == 206:
                if not _range_starts_at(response.headers.get("Content-Range", ""), offset):
                    part.unlink()
                    continue
            elif offset:
                offset = 0  # the server ignored Range and sends the whole file: restart
            _stream(response, part, offset, url, progress=progress, deadline=deadline)
        return
    raise DataSourceError(_help(f"{url} cannot be resumed; delete {part} and run again."))


def _stream(
    response, part: Path, offset: int, url: str, *, progress: bool, deadline: float
) -> None:
    """Append (or write, when offset is 0) the response body to ``part`` with a progress bar.

    Reads whatever has arrived (``read1``), so the deadline is checked between the
    bytes of a trickle; ``read(n)`` would wait for all ``n`` bytes.
    """

    length = response.headers.get("Content-Length")
    total = offset + int(length) if length and length.isdigit() else None
    received = offset
    name = part.name.removesuffix(".part")
    with (
        open(part, "ab" if offset else "wb") as out,
        tqdm(
            total=total,
            initial=offset,
            unit="B",
            unit_scale=True,
            unit_divisor=1024,
            desc=f"download {name}",
            disable=not progress,
        ) as bar,
    ):
        read = getattr(response, "read1", response.read)
        for block in iter(lambda: read(_CHUNK), b""):
            out.write(block)
            received += len(block)
            bar.update(len(block))
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"not finished within the {DOWNLOAD_DEADLINE_S:.0f} s deadline "
                    f"(source.DOWNLOAD_DEADLINE_S) after {received} bytes"
                )
    if total is not None and received != total:
        raise DataSourceError(
            _help(f"download of {url} stopped at {received} of {total} bytes; run again to resume.")
        )


def _range_starts_at(content_range: str, offset: int) -> bool:
    """True when a 'bytes START-END/TOTAL' header starts at ``offset``."""
    try:
        unit, _, rest = content_range.partition(" ")
        return unit == "bytes" and int(rest.split("-", 1)[0]) == offset
    except ValueError:
        return False


def is_sample(data: str | os.PathLike | None) -> bool:
    """Whether ``data`` is the embedded sample (by keyword or by a path to it): the one
    answer the notebooks' banner and their differences table both use."""
    if data is None or (isinstance(data, str) and data.strip().lower() in _SAMPLE_SPECS):
        return True
    try:
        path = Path(data).expanduser().resolve()
    except (TypeError, OSError):
        return False
    sample = SAMPLE_DIR.resolve()
    return path == sample or sample in path.parents
