"""Data sources: sample, folders, zips (once, safely), and the resumable download."""

from __future__ import annotations

import http.server
import io
import threading
import time
import warnings
import zipfile
from pathlib import Path

import pytest

from bloodlib import CLASSES
from bloodlib.core.config import SAMPLE_DIR, cache_dir
from bloodlib.core.hashing import sha256_file
from bloodlib.core.io import read_json
from bloodlib.data import source
from bloodlib.data.source import DataSourceError, DataSourceWarning, describe, resolve

pytestmark = pytest.mark.unit


def _zip_tree(root: Path, top: str = "PBC_dataset_normal_DIB", junk: bool = True) -> bytes:
    """The tree as a zip, the way macOS Finder makes one (with __MACOSX)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for path in sorted(root.rglob("*")):
            name = f"{top}/{path.relative_to(root).as_posix()}"
            if path.is_dir():
                zf.writestr(name + "/", b"")
            else:
                zf.write(path, name)
                if junk:
                    zf.writestr(f"__MACOSX/{top}/._{path.name}", b"\x00\x05\x16\x07")
    return buf.getvalue()


def _resolve_quietly(spec, **kw) -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DataSourceWarning)
        return resolve(spec, progress=False, **kw)


# --------------------------------------------------------------------------- folders


def test_sample_and_none_mean_the_embedded_sample():
    if not SAMPLE_DIR.is_dir():
        pytest.skip("data/sample is absent")
    assert resolve(None) == resolve("sample") == SAMPLE_DIR
    assert describe("sample").startswith("sample")


def test_a_class_folder_is_used_as_is(clean_tree):
    assert resolve(clean_tree.root) == clean_tree.root.resolve()
    assert describe(str(clean_tree.root)) == f"folder {clean_tree.root.resolve()}"


def test_a_wrapper_folder_descends_into_the_single_dataset(clean_tree):
    wrapper = clean_tree.root.parent
    (wrapper / "__MACOSX").mkdir()  # ignored, as in a Finder-made download
    assert resolve(wrapper) == clean_tree.root.resolve()


def test_no_class_folders_is_an_error(tmp_path):
    (tmp_path / "images").mkdir()
    with pytest.raises(DataSourceError, match="no class folders"):
        resolve(tmp_path)


def test_unknown_spec_is_a_clear_error(tmp_path):
    with pytest.raises(DataSourceError, match="no such file or folder") as err:
        resolve(tmp_path / "nowhere")
    assert "mendeley" in str(err.value) and ".zip" in str(err.value)
    not_zip = tmp_path / "notes.txt"
    not_zip.write_text("x")
    with pytest.raises(DataSourceError, match="neither a folder nor a .zip"):
        resolve(not_zip)


def test_keywords_cover_the_named_sources():
    assert set(source.KEYWORDS) == {"sample", "mendeley", "pbc"}


# --------------------------------------------------------------------------- zips


def test_zip_is_extracted_once_into_the_cache(clean_tree, tmp_path, monkeypatch):
    archive = tmp_path / "PBC_dataset_normal_DIB.zip"
    archive.write_bytes(_zip_tree(clean_tree.root))
    with pytest.warns(DataSourceWarning, match="does not match the full PBC release"):
        root = resolve(archive, progress=False)
    digest = sha256_file(archive)
    assert root == cache_dir() / "datasets" / digest[:16] / "PBC_dataset_normal_DIB"
    assert sorted(p.name for p in root.iterdir()) == sorted(CLASSES)
    got = sorted(p.relative_to(root).as_posix() for p in root.rglob("*.jpg"))
    assert got == sorted(clean_tree.expected)
    assert not (root.parent / "__MACOSX").exists()
    assert (root / "ig/IG_1000.jpg").read_bytes() == (
        clean_tree.root / "ig/IG_1000.jpg"
    ).read_bytes()

    def boom(*a, **k):
        raise AssertionError("extracted twice")

    monkeypatch.setattr(source, "extract_zip", boom)
    with warnings.catch_warnings():
        warnings.simplefilter("error", DataSourceWarning)  # warned once, at extraction
        assert resolve(str(archive), progress=False) == root
    assert [p.name for p in (cache_dir() / "datasets").iterdir()] == [digest[:16]]
    assert describe(archive) == f"zip {archive.resolve()} sha256={digest}"


def test_zip_without_a_top_folder(clean_tree, tmp_path):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for rel in clean_tree.expected:
            zf.write(clean_tree.root / rel, rel)
    archive = tmp_path / "flat.zip"
    archive.write_bytes(buf.getvalue())
    root = _resolve_quietly(archive)
    assert root.parent.name == "datasets" and (root / "basophil").is_dir()


def test_nested_zip_as_in_the_mendeley_bundle(clean_tree, tmp_path):
    inner = _zip_tree(clean_tree.root, junk=False)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("A dataset of blood cell images/PBC_dataset_normal_DIB.zip", inner)
    archive = tmp_path / "snkd93bnjr-1.zip"
    archive.write_bytes(buf.getvalue())
    root = _resolve_quietly(archive)
    assert root.name == "PBC_dataset_normal_DIB" and (root / "platelet").is_dir()
    assert _resolve_quietly(archive) == root


@pytest.mark.parametrize(
    "evil", ["../evil.jpg", "/tmp/evil.jpg", "a/../../evil.jpg", "C:/evil.jpg"]
)
def test_zip_slip_is_refused(tmp_path, evil):
    archive = tmp_path / "evil.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("PBC/basophil/BA_1.jpg", b"x")
        zf.writestr(zipfile.ZipInfo(evil), b"gotcha")
    with pytest.raises(DataSourceError, match="unsafe path"):
        resolve(archive, progress=False)
    assert not (tmp_path.parent / "evil.jpg").exists() and not (tmp_path / "evil.jpg").exists()
    datasets = cache_dir() / "datasets"
    assert not datasets.exists() or not any(datasets.iterdir())  # no half extraction left


def test_a_broken_zip_is_a_clear_error(tmp_path):
    archive = tmp_path / "broken.zip"
    archive.write_bytes(b"PK\x03\x04 this is not really a zip")
    with pytest.raises(DataSourceError, match="not a readable zip"):
        resolve(archive, progress=False)


def test_check_counts_is_silent_on_the_full_release(tmp_path, monkeypatch):
    for cls in CLASSES:
        (tmp_path / cls).mkdir()
        for i in range(3):
            (tmp_path / cls / f"{i}.jpg").write_bytes(b"")
    monkeypatch.setattr(source, "EXPECTED_COUNTS", dict.fromkeys(CLASSES, 3))
    with warnings.catch_warnings():
        warnings.simplefilter("error", DataSourceWarning)
        assert source.check_counts(tmp_path) == dict.fromkeys(CLASSES, 3)


# --------------------------------------------------------------------------- download


class _Server:
    """A tiny HTTP server on 127.0.0.1 serving one payload, with optional Range support."""

    def __init__(self, payload: bytes, *, ranges: bool = True):
        self.payload = payload
        self.ranges = ranges
        self.cut_next = 0  # when set, the next response stops after this many body bytes
        self.requests: list[str | None] = []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 (http.server API)
                header = self.headers.get("Range")
                outer.requests.append(header)
                start = 0
                if header and outer.ranges:
                    start = int(header.removeprefix("bytes=").split("-")[0])
                    if start >= len(outer.payload):
                        self.send_response(416)
                        self.end_headers()
                        return
                    self.send_response(206)
                    end = len(outer.payload) - 1
                    self.send_header("Content-Range", f"bytes {start}-{end}/{len(outer.payload)}")
                else:
                    self.send_response(200)
                body = outer.payload[start:]
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if outer.cut_next:
                    body, outer.cut_next = body[: outer.cut_next], 0
                    self.close_connection = True
                self.wfile.write(body)

            def log_message(self, *args):  # keep test output quiet
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        # Bounded: stops itself after 60 s even if a test forgets to.
        self.watchdog = threading.Timer(60, self.httpd.shutdown)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_port}/snkd93bnjr-1.zip"

    def __enter__(self):
        self.thread.start()
        self.watchdog.start()
        return self

    def __exit__(self, *exc):
        self.watchdog.cancel()
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(5)


@pytest.fixture
def payload(clean_tree) -> bytes:
    return _zip_tree(clean_tree.root)


def _downloads() -> Path:
    return cache_dir() / "downloads"


def test_offline_fails_fast_with_instructions(monkeypatch):
    monkeypatch.setenv("BLOODLIB_PBC_URL", "http://127.0.0.1:9/x.zip")  # closed port
    start = time.monotonic()
    with pytest.raises(DataSourceError) as err:
        resolve("mendeley", progress=False)
    assert time.monotonic() - start < 15
    message = str(err.value)
    assert "https://data.mendeley.com/datasets/snkd93bnjr/1" in message
    assert "--data" in message and "BLOODLIB_PBC_URL" in message
    assert describe("pbc").endswith("sha256=not downloaded yet")


def test_download_then_reuse(payload, monkeypatch):
    with _Server(payload) as server:
        monkeypatch.setenv("BLOODLIB_PBC_URL", server.url)
        root = _resolve_quietly("mendeley")
        assert (root / "neutrophil").is_dir()
        assert server.requests == [None]
        assert _resolve_quietly("pbc") == root
        assert server.requests == [None]  # the finished file is reused, not fetched again
    done = _downloads() / "snkd93bnjr-1.zip"
    assert done.read_bytes() == payload and not done.with_suffix(".zip.part").exists()
    hashes = read_json(_downloads() / "hashes.json")
    assert hashes["snkd93bnjr-1.zip"]["sha256"] == sha256_file(done)
    assert sha256_file(done) in describe("mendeley")


def test_a_partial_download_resumes_with_range(payload, monkeypatch):
    part = _downloads() / "snkd93bnjr-1.zip.part"
    part.parent.mkdir(parents=True)
    part.write_bytes(payload[:1000])
    with _Server(payload) as server:
        monkeypatch.setenv("BLOODLIB_PBC_URL", server.url)
        root = _resolve_quietly("mendeley")
        assert server.requests == ["bytes=1000-"]
    assert (_downloads() / "snkd93bnjr-1.zip").read_bytes() == payload
    assert (root / "basophil").is_dir()


def test_an_interrupted_download_keeps_the_part_and_resumes(payload, monkeypatch):
    with _Server(payload) as server:
        monkeypatch.setenv("BLOODLIB_PBC_URL", server.url)
        server.cut_next = 5000
        with pytest.raises(DataSourceError, match="resume"):
            resolve("mendeley", progress=False)
        part = _downloads() / "snkd93bnjr-1.zip.part"
        assert part.stat().st_size == 5000
        _resolve_quietly("mendeley")
        assert server.requests == [None, "bytes=5000-"]
    assert (_downloads() / "snkd93bnjr-1.zip").read_bytes() == payload


def test_a_server_ignoring_range_restarts_the_download(payload, monkeypatch):
    part = _downloads() / "snkd93bnjr-1.zip.part"
    part.parent.mkdir(parents=True)
    part.write_bytes(b"stale bytes from another file")
    with _Server(payload, ranges=False) as server:
        monkeypatch.setenv("BLOODLIB_PBC_URL", server.url)
        _resolve_quietly("mendeley")
        assert server.requests == [f"bytes={len(b'stale bytes from another file')}-"]
    assert (_downloads() / "snkd93bnjr-1.zip").read_bytes() == payload


def test_a_changed_download_is_refused(payload, monkeypatch, clean_tree):
    with _Server(payload) as server:
        monkeypatch.setenv("BLOODLIB_PBC_URL", server.url)
        _resolve_quietly("mendeley")
    done = _downloads() / "snkd93bnjr-1.zip"
    done.write_bytes(_zip_tree(clean_tree.root, junk=False))  # other bytes, same name
    with pytest.raises(DataSourceError, match="delete") as err:
        resolve("mendeley", progress=False)
    assert str(done) in str(err.value)


def test_http_errors_are_explained(payload, monkeypatch):
    with _Server(payload) as server:
        monkeypatch.setenv("BLOODLIB_PBC_URL", server.url)
        server.httpd.RequestHandlerClass.do_GET = lambda self: self.send_error(404)
        with pytest.raises(DataSourceError, match="HTTP 404") as err:
            resolve("mendeley", progress=False)
    assert "data.mendeley.com" in str(err.value)
