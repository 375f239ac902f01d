"""What produced a run: code, environment, hardware, parameters and data.

Written by the runner to ``run_dir/provenance.json``. Deliberately light: no TensorFlow import
(seconds, and it would grab a GPU); versions come from package metadata instead.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import sys
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

from bloodlib import __version__
from bloodlib.core.config import PACKAGE_DIR, REPO_ROOT
from bloodlib.core.hashing import sha256_file, sha256_rows
from bloodlib.core.io import write_json

#: Files whose content is "the code" of a run: every module and the run profiles.
CODE_PATTERNS: tuple[str, ...] = ("**/*.py", "**/profiles.yml")

#: Distributions whose versions are recorded. Both TensorFlow variants are listed because the
#: CPU and GPU environments install different distributions of the same package.
PACKAGES: tuple[str, ...] = (
    "tensorflow",
    "tensorflow-cpu",
    "keras",
    "numpy",
    "pandas",
    "scikit-learn",
    "scipy",
    "pillow",
    "papermill",
    "nbval",
    "seaborn",
    "matplotlib",
)
CPU_FLAGS: tuple[str, ...] = ("avx2", "avx512f", "amx_tile", "avx512_bf16")


def _run(cmd: list[str], cwd: Path | None = None) -> str | None:
    """stdout of ``cmd``, or None when it is missing, fails or hangs."""
    try:
        out = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=15, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip()


def git_info(root: Path = REPO_ROOT) -> dict[str, Any]:
    """Commit and dirty flag of the checkout; None values outside a git checkout."""
    commit = _run(["git", "rev-parse", "HEAD"], cwd=root)
    status = _run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root)
    return {"commit": commit, "dirty": None if status is None else bool(status)}


def code_digest(package_dir: Path | None = None) -> dict[str, str]:
    """bloodlib's version and a SHA-256 over its source files (relative path and content).

    An uncommitted edit changes it too, which a git commit alone would not show; the runner
    re-runs notebooks whose code digest changed.
    """
    root = Path(package_dir or PACKAGE_DIR)
    files = sorted({p for pattern in CODE_PATTERNS for p in root.glob(pattern) if p.is_file()})
    digest = sha256_rows((p.relative_to(root).as_posix(), sha256_file(p)) for p in files)
    return {"version": __version__, "sha256": digest}


def package_versions(names: tuple[str, ...] = PACKAGES) -> dict[str, str | None]:
    versions: dict[str, str | None] = {}
    for name in names:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def _cpuinfo() -> tuple[str | None, list[str]]:
    """CPU model name and flags from /proc/cpuinfo (Linux); (None, []) elsewhere."""
    model, flags = None, []
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return platform.processor() or None, []
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "model name" and model is None:
            model = value.strip()
        elif key == "flags" and not flags:
            flags = value.split()
    return model, flags


def _ram_bytes() -> int | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return None


def gpus() -> list[dict[str, str]]:
    """NVIDIA GPUs as reported by nvidia-smi; [] when there is none or no driver."""
    if shutil.which("nvidia-smi") is None:
        return []
    out = _run(
        [
            "nvidia-smi",
            "--query-gpu=name,memory.total,driver_version",
            "--format=csv,noheader",
        ]
    )
    found = []
    for line in (out or "").splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) == 3:
            found.append(dict(zip(("name", "memory_total", "driver_version"), parts, strict=True)))
    return found


def hardware() -> dict[str, Any]:
    model, flags = _cpuinfo()
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        usable = os.cpu_count()
    ram = _ram_bytes()
    return {
        "cpu_model": model,
        "logical_cores": os.cpu_count(),
        "usable_cores": usable,  # differs from logical_cores under taskset/cgroup pinning
        "ram_gb": round(ram / 2**30, 1) if ram else None,
        "cpu_flags": {flag: flag in flags for flag in CPU_FLAGS} if flags else {},
        "gpus": gpus(),
    }


def kernel_info(name: str | None) -> dict[str, Any]:
    """The Jupyter kernel's name and the interpreter it launches, when resolvable."""
    info: dict[str, Any] = {"name": name, "argv": None}
    if not name:
        return info
    try:
        from jupyter_client.kernelspec import KernelSpecManager  # lazy: only for a named kernel

        spec = KernelSpecManager().get_kernel_spec(name)
        info["argv"] = list(spec.argv)
        info["display_name"] = spec.display_name
        # jupyter_client launches a bare "python"/"python3" spec with the launcher's interpreter.
        exe = spec.argv[0] if spec.argv else None
        info["executable"] = sys.executable if exe in ("python", "python3") else exe
    except Exception:  # provenance must never break a finished run
        pass
    return info


def _data_json(run_dir: Path) -> dict[str, Any] | None:
    path = run_dir / "data.json"
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def collect(
    params: dict[str, dict[str, Any]],
    run_dir: Path,
    *,
    kernel: str | None = None,
    profile: str | None = None,
    notebooks: list[dict[str, Any]] | None = None,
    code: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Provenance record of a run.

    ``params`` maps notebook name -> the parameters injected into it; ``notebooks`` is the
    runner's per-notebook status (ran/skipped, elapsed, hash); ``code`` is the
    :func:`code_digest` the run used (computed here when not given).
    """
    run_dir = Path(run_dir)
    data_info = _data_json(run_dir)
    specs = {p.get("data") for p in params.values() if "data" in p}
    return {
        "timestamp": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "bloodlib_version": __version__,
        "code": code or code_digest(),
        "git": git_info(),
        "python": sys.version.split()[0],
        "python_executable": sys.executable,
        "platform": platform.platform(),
        "packages": package_versions(),
        "hardware": hardware(),
        "kernel": kernel_info(kernel),
        "profile": profile,
        "seeds": {nb: p["seed"] for nb, p in params.items() if "seed" in p},
        "pythonhashseed": os.environ.get("PYTHONHASHSEED"),
        "parameters": params,
        "notebooks": notebooks or [],
        "data": {
            "spec": specs.pop() if len(specs) == 1 else sorted(map(str, specs)) or None,
            "manifest_hash": (data_info or {}).get("manifest_hash"),
            "source": (data_info or {}).get("source"),
            "data_json": data_info,
        },
    }


def write(params: dict[str, dict[str, Any]], run_dir: Path, **kwargs: Any) -> Path:
    """Collect and atomically write ``run_dir/provenance.json``."""
    return write_json(Path(run_dir) / "provenance.json", collect(params, run_dir, **kwargs))
