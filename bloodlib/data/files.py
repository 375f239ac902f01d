"""One file of a dataset folder: what class its folder names, and every defect it can have.

:func:`inspect_file` turns a file into one manifest row and never raises: a defect becomes
a ``status`` (:data:`DEFECTS`, in precedence order) with a human ``reason``. Hostile files
are rows too, and never stop or stall a scan: only regular files are opened (a FIFO named
``pipe.jpg`` would block ``open`` forever), symbolic links that resolve outside the scanned
folder are reported and not followed (links that stay inside are followed: a folder may
de-duplicate with them; links to folders are reported, not descended), an image above
:data:`MAX_PIXELS` is refused from its header before a pixel is decoded, large files are
hashed in chunks rather than read whole, and a name that is not valid UTF-8 is reported with
an escaped spelling so that tables and CSVs stay writable.

The rules across files (copies, odd sizes, groups) and the cached table live in
:mod:`bloodlib.data.manifest`.
"""

from __future__ import annotations

import hashlib
import io
import os
import stat
from collections.abc import Sequence
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageStat, UnidentifiedImageError

from bloodlib import CLASSES, IMAGE_FORMATS

#: Largest image, in pixels (width x height), that is decoded. The PBC tiles are 360x363
#: (0.13 MP) and a full microscope camera frame is 5-20 MP, so 50 MP refuses no image a user
#: would classify, while its decoded RGB copy (150 MB) stays harmless. Above it an image is
#: refused from its header, before any pixel is decoded: a 1 MB PNG can declare 20000x20000
#: pixels, 1.2 GB decoded. A setting: pass ``max_pixels`` to :func:`scan` or
#: :func:`inspect_file`, or change this value. (Pillow's own bomb check, at twice
#: ``PIL.Image.MAX_IMAGE_PIXELS``, still refuses larger images whatever this says.)
MAX_PIXELS = 50_000_000


#: Largest file hashed and decoded, in bytes. An uncompressed 8-bit RGB image of MAX_PIXELS
#: (BMP, TIFF) is 150 MB; a bigger file is no image we would decode, and hashing a
#: multi-gigabyte file (a zip bomb's output) only costs time.
MAX_FILE_BYTES = 256 * 2**20


# Files up to this size are read in one call (faster for the ~15 kB PBC JPEGs than buffered
# reads from the file); larger ones are hashed and decoded from the file, in chunks, so that
# parallel scan threads never hold many large files in memory.
_READ_WHOLE_BYTES = 16 * 2**20


IMAGE_EXTENSIONS = IMAGE_FORMATS  # the one suffix -> format table, in bloodlib/__init__.py


# Pillow names some JPEGs by their container (MPO: camera multi-picture JPEG).
_FORMAT_ALIASES = {"MPO": "JPEG"}


#: Defect codes in precedence order: a row gets the first that applies.
DEFECTS: tuple[str, ...] = (
    "hidden",
    "non_image_extension",
    "bad_name",  # not valid UTF-8: paths in tables, CSVs and TensorFlow must be text
    "not_regular",  # FIFO, socket, device or a link to a folder: never opened
    "link_outside",  # a symbolic link that leaves the scanned folder: never followed
    "unreadable",
    "not_image",
    "too_large",  # above MAX_PIXELS or MAX_FILE_BYTES: never decoded
    "truncated",
    "corrupt",
    "wrong_format",
    "cmyk",
    "rgba",
    "grayscale",
    # After the content checks: a caller classifying a loose folder (all rows
    # unknown_class) can trust that such a row decodes to a colour image.
    "unknown_class",
    "odd_size",
    "label_conflict",
    "duplicate",
)


STATUSES: tuple[str, ...] = ("ok", *DEFECTS)
#: Statuses of a file whose bytes another file of the folder also holds (``manifest.flag_copies``).
COPY_STATUSES = frozenset({"duplicate", "label_conflict"})


#: Statuses of a file that still decodes to an RGB image a network can read (a cell outside
#: the class layout, or of an unusual size): what classify predicts and adapt learns from.
CLASSIFIABLE = frozenset({"ok", "unknown_class", "odd_size"})


# Defects of where a file is or how it is named, not of what it holds.
_LOCATION_DEFECTS = {"hidden", "non_image_extension", "unknown_class"}


# An RGB image whose channels never differ by more than this is grey in disguise.
_GREY_TOLERANCE = 3


# ITU-R 601 luma weights, as Pillow's convert("L").
_LUMA = np.array([0.299, 0.587, 0.114])


def class_of(folder: str, classes: Sequence[str] = CLASSES) -> str | None:
    """The class a folder's name gives its files (any case: ``Basophil``), or None.

    The one rule from folder names to labels: the scan, ``adapt``'s labelled cells and
    ``classify``'s scored folders all call it. ``classes`` are a model's own, when not PBC's.
    """
    return {c.lower(): c for c in classes}.get(folder.lower())


def display_name(name: str) -> str:
    """``name`` as printable text: bytes that are not UTF-8 become ``\\xff`` escapes.

    ``os.walk`` hands such bytes over as lone surrogates, which no UTF-8 writer (CSV,
    JSON, TensorFlow) accepts; valid names come back unchanged.
    """
    try:
        name.encode("utf-8")
        return name
    except UnicodeEncodeError:
        return os.fsencode(name).decode("utf-8", "backslashreplace")


def list_files(root: Path) -> list[tuple[str, int, int]]:
    """(relpath, size, mtime_ns) of every entry under root to report, sorted by relpath.

    Files of every kind (FIFOs and sockets too: nothing is opened here), links to
    folders (reported, not descended) and unreadable sub-folders (reported) each give
    one entry; relpaths may hold surrogates (see :func:`display_name`).
    """
    out: list[tuple[str, int, int]] = []
    root = Path(root)

    def add(path: str) -> None:
        rel = Path(path).relative_to(root).as_posix()
        try:
            st = os.lstat(path)
            out.append((rel, st.st_size, st.st_mtime_ns))
        except OSError:  # vanished: still a row, flagged when read
            out.append((rel, -1, 0))

    def unreadable_folder(exc: OSError) -> None:
        if exc.filename is not None and Path(exc.filename) != root:
            add(exc.filename)

    for dirpath, dirnames, filenames in os.walk(root, onerror=unreadable_folder):
        dirnames.sort()
        for name in filenames:
            add(os.path.join(dirpath, name))
        for name in [d for d in dirnames if os.path.islink(os.path.join(dirpath, d))]:
            add(os.path.join(dirpath, name))  # os.walk does not descend links: say so
    out.sort()
    return out


def sniff(data: bytes) -> str:
    """A few words on what a blob of bytes holds, for reasons on non-image rows."""
    if not data:
        return "an empty file"
    if data[4:8] == b"Bud1":
        return "macOS .DS_Store folder metadata"
    if data[:4] == b"\x00\x05\x16\x07":
        return "a macOS AppleDouble resource fork"
    if data[:3] == b"\xff\xd8\xff":
        return "JPEG data"
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return "PNG data"
    if data[:8] == b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1":
        return "an OLE compound file (e.g. Windows Thumbs.db)"
    head = data[:512]
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        text = None
    if text is not None and all(c.isprintable() or c in "\r\n\t" for c in text):
        preview = " ".join(text.split())[:40]
        return f"text ({preview!r})"
    return f"binary data starting {data[:4].hex(' ')}"


def _empty_row(relpath: str, path: Path, label: str) -> dict:
    return {
        "relpath": relpath,
        "path": str(path),
        "label": label,
        "width": 0,
        "height": 0,
        "mode": "",
        "format": "",
        "bytes": 0,
        "sha256": "",
        "dhash": "",
        "status": "ok",
        "reason": "",
        "group": "",
        "mean_r": np.nan,
        "mean_g": np.nan,
        "mean_b": np.nan,
        "brightness": np.nan,
    }


def _dhash(grey: Image.Image) -> str:
    """64-bit difference hash: is each pixel of a 9x8 thumbnail brighter than its left neighbour."""
    px = np.asarray(grey.resize((9, 8), Image.Resampling.BOX), dtype=np.int16)
    return np.packbits(px[:, 1:] > px[:, :-1]).tobytes().hex()


def _mode_defect(mode: str) -> tuple[str, str] | None:
    """Defects readable from the colour mode alone (RGB and P need a look at the pixels)."""
    if mode in ("RGB", "P"):
        return None
    if mode == "CMYK":
        return "cmyk", "CMYK colour space (expected RGB)"
    if mode in ("RGBA", "RGBa", "PA"):
        return "rgba", f"{mode} with an alpha channel (expected RGB)"
    if mode in ("L", "LA", "La", "1") or mode.startswith(("I", "F")):
        return "grayscale", f"single-channel image (mode {mode})"
    return "wrong_format", f"unsupported colour mode {mode}"


def _is_grey(rgb: Image.Image, means: np.ndarray) -> bool:
    """True when no pixel's channels differ by more than a rounding error."""
    if np.ptp(means) > _GREY_TOLERANCE:  # the cheap test settles every colour image
        return False
    return int(np.ptp(np.asarray(rgb), axis=2).max()) <= _GREY_TOLERANCE


class _NotOpened(Exception):
    """A file that is deliberately not opened: ``code`` and ``reason`` become its row's defect."""

    def __init__(self, code: str, reason: str) -> None:
        super().__init__(reason)
        self.code, self.reason = code, reason


def _kind(mode: int) -> str:
    if stat.S_ISFIFO(mode):
        return "a named pipe (FIFO)"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISDIR(mode):
        return "a folder"
    return "a special file"


def _open_regular(root: Path, path: Path) -> BinaryIO:
    """Open ``path`` for reading only if it is a regular file inside ``root``.

    Raises :class:`_NotOpened` for anything else and ``OSError`` when it cannot be read.
    The type is checked before ``open`` (opening a FIFO blocks until a writer comes,
    opening a device can have effects), and again on the open descriptor, which
    O_NONBLOCK keeps from blocking should the file be swapped in between.
    """
    st = os.lstat(path)
    via = ""
    if stat.S_ISLNK(st.st_mode):
        target = os.path.realpath(path)
        if not Path(target).is_relative_to(os.path.realpath(root)):
            raise _NotOpened(
                "link_outside",
                f"symbolic link to {display_name(target)}, outside the data folder: not followed",
            )
        st = os.stat(path)  # inside the folder: followed (FileNotFoundError when dangling)
        via = "a symbolic link to "
    if not stat.S_ISREG(st.st_mode):
        what = f"{via}{_kind(st.st_mode)}"
        if stat.S_ISDIR(st.st_mode):
            raise _NotOpened("not_regular", f"{what}, not descended: its files are not scanned")
        raise _NotOpened("not_regular", f"{what}, not a regular file: not opened")
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0)
    fd = os.open(path, flags)
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise _NotOpened("not_regular", f"{_kind(mode)}, not a regular file: not opened")
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def inspect_file(root: Path, relpath: str, *, max_pixels: int | None = None) -> dict:
    """One manifest row for one file; never raises, never blocks on a special file.

    ``max_pixels`` (default :data:`MAX_PIXELS`) refuses larger images from their
    header, before decoding. ``relpath`` may hold surrogates (a name that is not
    UTF-8): the row then shows it escaped, with status ``bad_name``.
    """
    limit = MAX_PIXELS if max_pixels is None else int(max_pixels)
    path = root / relpath
    shown = display_name(relpath)
    parts = shown.split("/")
    label = class_of(parts[0]) if len(parts) > 1 else None
    row = _empty_row(
        shown, Path(display_name(str(path))), label or (parts[0] if len(parts) > 1 else "")
    )
    defects: list[tuple[str, str]] = []
    name = parts[-1]
    ext = os.path.splitext(name)[1].lower()

    if any(p.startswith(".") for p in parts):
        kind = "AppleDouble file" if name.startswith("._") else "hidden file"
        defects.append(("hidden", kind))
    if ext not in IMAGE_EXTENSIONS:
        defects.append(("non_image_extension", f"extension {ext or '(none)'!r} is not an image"))
    if shown != relpath:
        defects.append(
            ("bad_name", "file name is not valid UTF-8 (shown with \\x escapes): rename the file")
        )
    if label is None:
        where = "directly in the dataset root" if len(parts) == 1 else f"in folder {parts[0]!r}"
        defects.append(
            ("unknown_class", f"{where}, which is not one of the {len(CLASSES)} classes")
        )

    try:
        f = _open_regular(root, path)
    except _NotOpened as exc:
        defects.append((exc.code, exc.reason))
        return _finish(row, defects)
    except OSError as exc:
        defects.append(("unreadable", f"cannot read: {exc.strerror or exc}"))
        return _finish(row, defects)
    with f:
        try:
            size = os.fstat(f.fileno()).st_size
            row["bytes"] = size
            if size > MAX_FILE_BYTES:
                mib = MAX_FILE_BYTES / 2**20
                defects.append(
                    (
                        "too_large",
                        f"{size / 2**20:.0f} MiB, above the {mib:.0f} MiB file limit: not read",
                    )
                )
                return _finish(row, defects)
            if size <= _READ_WHOLE_BYTES:  # one read serves the hash and the decoder
                data = f.read(_READ_WHOLE_BYTES + 1)
                row["bytes"] = len(data)  # what was read, should the file have changed
                row["sha256"] = hashlib.sha256(data).hexdigest()
                source: BinaryIO = io.BytesIO(data)
            else:  # in chunks: a large file is never all in memory at once
                row["sha256"] = hashlib.file_digest(f, "sha256").hexdigest()
                f.seek(0)
                source = f
        except OSError as exc:
            defects.append(("unreadable", f"cannot read: {exc.strerror or exc}"))
            return _finish(row, defects)
        _inspect_image(source, row, defects, ext, limit)
    return _finish(row, defects)


def _inspect_image(
    f: BinaryIO, row: dict, defects: list[tuple[str, str]], ext: str, limit: int
) -> None:
    """Fill the image columns of ``row`` from the open file ``f``; append any defect."""
    try:
        im = Image.open(f)
        row["format"] = im.format or ""
        row["mode"] = im.mode
        row["width"], row["height"] = im.size
    except UnidentifiedImageError:
        f.seek(0)
        defects.append(("not_image", f"not an image: {sniff(f.read(512))}"))
        return
    except Image.DecompressionBombError as exc:  # Pillow's own, larger, limit
        defects.append(("too_large", f"not decoded: {exc}"))
        return
    except Exception as exc:  # any decoder bug must become a row, not a crash
        defects.append(("corrupt", f"cannot open: {type(exc).__name__}: {exc}"))
        return

    # The header alone gave the size: refuse a decompression bomb before decoding it.
    if im.width * im.height > limit:
        defects.append(
            (
                "too_large",
                f"{im.width}x{im.height} = {im.width * im.height / 1e6:.0f} megapixels, above "
                f"the {limit / 1e6:g}-megapixel limit: not decoded (a setting: "
                "bloodlib.data.files.MAX_PIXELS, or max_pixels=)",
            )
        )
        return
    try:
        im.load()  # the full verifying decode; LOAD_TRUNCATED_IMAGES stays False
    except OSError as exc:
        code = "truncated" if "truncated" in str(exc).lower() else "corrupt"
        defects.append((code, f"{im.format} fails to decode: {exc}"))
        return
    except Exception as exc:
        defects.append(("corrupt", f"{im.format} fails to decode: {type(exc).__name__}: {exc}"))
        return
    expected = IMAGE_EXTENSIONS.get(ext)
    if expected and im.format and _FORMAT_ALIASES.get(im.format, im.format) != expected:
        defects.append(("wrong_format", f"{im.format} content under a {ext} name"))
    mode_defect = _mode_defect(im.mode)
    try:
        # Colour stats and dhash from a ~90 px copy of the already decoded image:
        # reduce() on it is cheaper than a second, draft-mode decode of the file.
        factor = max(1, min(im.size) // 90)
        rgb = im if im.mode == "RGB" else im.convert("RGB")
        small = rgb.reduce(factor) if factor > 1 else rgb
        means = np.array(ImageStat.Stat(small).mean)  # from histograms, in C
        row["mean_r"], row["mean_g"], row["mean_b"] = (round(float(m), 3) for m in means)
        # Mean luma equals the luma of the mean colour: no grey copy needed for it.
        row["brightness"] = round(float(means @ _LUMA), 3)
        row["dhash"] = _dhash(small.convert("L"))
        if mode_defect is None and _is_grey(small, means):
            what = "palette image" if im.mode == "P" else "stored as RGB but"
            mode_defect = ("grayscale", f"{what} without colour: every pixel is grey")
    except Exception as exc:
        if mode_defect is None:  # a mode defect already explains a failed conversion
            defects.append(("corrupt", f"decoded but unusable: {type(exc).__name__}: {exc}"))
    if mode_defect:
        defects.append(mode_defect)
    codes = {code for code, _ in defects}
    if "hidden" in codes and codes <= _LOCATION_DEFECTS:  # say what a hidden file holds
        defects.append(("hidden", f"holds a valid {im.format} {im.width}x{im.height} image"))


def _finish(row: dict, defects: list[tuple[str, str]]) -> dict:
    """Pick the first defect by precedence; keep every reason."""
    if defects:
        defects.sort(key=lambda d: DEFECTS.index(d[0]))  # stable: reasons keep their order
        row["status"] = defects[0][0]
        row["reason"] = "; ".join(r for _, r in defects)
    return row
