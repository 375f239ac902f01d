"""Shared pieces of the benchmark scripts: flags, image choice, timing, and the report.

Every script measures a thing and its reference in the same process, so a target is
a ratio of two numbers taken under the same conditions (same machine, same load,
same model). Absolute images/s are printed too, with the machine facts beside them.
Nothing here is a unit test: speed is never asserted in ``tests/``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
# As in the Makefile: caches (manifests, converted Lite0 weights) live in the clone.
os.environ.setdefault("BLOODLIB_CACHE", str(REPO_ROOT / ".cache"))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
if str(REPO_ROOT) not in sys.path:  # run from a checkout without `pip install -e .`
    sys.path.insert(0, str(REPO_ROOT))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

#: The real dev images, beside the clone; the embedded sample when they are absent.
DEV_DATA = REPO_ROOT.parent / "shared" / "data" / "pbc-dev" / "PBC_dataset_normal_DIB"
SEED = 42


def default_data() -> Path:
    from bloodlib.core.config import SAMPLE_DIR

    return DEV_DATA if DEV_DATA.is_dir() else SAMPLE_DIR


# --------------------------------------------------------------------------- flags


def parser(description: str, *, images: int, repeats: int = 3) -> argparse.ArgumentParser:
    """The flags every benchmark takes; a script adds its own to the returned parser."""
    p = argparse.ArgumentParser(
        description=description, formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    p.add_argument(
        "--data",
        type=Path,
        default=None,
        help=f"dataset folder in the class layout (default: {DEV_DATA} if present, "
        "else the embedded sample data/sample)",
    )
    p.add_argument("--images", type=int, default=images, help="number of images N")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--repeats", type=int, default=repeats, help="timed repeats after a warm-up")
    p.add_argument("--backbone", default="efficientnet_lite0")
    p.add_argument(
        "--image-size", type=int, default=None, help="input size (default: the backbone's own)"
    )
    p.add_argument(
        "--threads",
        type=int,
        default=0,
        help="TensorFlow intra- and inter-op threads (0: TensorFlow's default)",
    )
    p.add_argument("--json", type=Path, default=None, help="also write the results here")
    p.add_argument("--strict", action="store_true", help="exit 1 when a target fails")
    return p


def parse(p: argparse.ArgumentParser, argv: list[str] | None = None) -> argparse.Namespace:
    args = p.parse_args(argv)
    if args.images < 1 or args.batch_size < 1 or args.repeats < 1:
        p.error("--images, --batch-size and --repeats must be at least 1")
    args.data = (args.data or default_data()).expanduser().resolve()
    from bloodlib.models import backbones

    args.image_size = int(args.image_size or backbones.get(args.backbone).input_size)
    if args.threads:
        import tensorflow as tf

        tf.config.threading.set_intra_op_parallelism_threads(args.threads)
        tf.config.threading.set_inter_op_parallelism_threads(args.threads)
    return args


# --------------------------------------------------------------------------- images


def choose_images(data: Path, n: int, seed: int = SEED) -> pd.DataFrame:
    """N usable images (path, label, sha256, relpath), chosen deterministically.

    With fewer usable images than N (the embedded sample has 245) the list is
    extended by further permutations, so images repeat; ``attrs["repeated"]`` says so.
    """
    import warnings

    from bloodlib.data import manifest

    with warnings.catch_warnings():  # a summary of excluded files is no news here
        warnings.simplefilter("ignore", manifest.DataQualityWarning)
        usable = manifest.scan(data, progress=False).usable
    if usable.empty:
        raise SystemExit(f"no usable images under {data}")
    cols = ["path", "label", "sha256", "relpath"]
    rng = np.random.default_rng(seed)
    idx: list[int] = []
    while len(idx) < n:
        idx.extend(rng.permutation(len(usable))[: n - len(idx)].tolist())
    chosen = usable.iloc[idx][cols].reset_index(drop=True)
    chosen.attrs["available"] = len(usable)
    chosen.attrs["repeated"] = n > len(usable)
    return chosen


def random_images(n: int, size: int, seed: int = SEED) -> np.ndarray:
    """float32 0..255 tensors of the pipeline's output shape, for the pure-compute references."""
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, size=(n, size, size, 3), dtype=np.uint8).astype(np.float32)


# --------------------------------------------------------------------------- timing


@dataclass
class Timing:
    """Seconds of each timed repeat (warm-up excluded)."""

    seconds: list[float] = field(default_factory=list)

    @property
    def best(self) -> float:
        return min(self.seconds)

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)

    def rate(self, n: int, how: str = "best") -> float:
        """Items per second from the best (default) or median repeat."""
        s = self.best if how == "best" else self.median
        return n / s if s > 0 else float("inf")

    def as_dict(self) -> dict[str, Any]:
        return {
            "seconds": [round(s, 4) for s in self.seconds],
            "best": self.best,
            "median": self.median,
        }


def time_interleaved(
    cases: dict[str, Callable[[], Any]],
    repeats: int,
    warmups: dict[str, Callable[[], Any]] | None = None,
) -> dict[str, Timing]:
    """Time each case ``repeats`` times, interleaved (a b a b ...), after its warm-up.

    Interleaving spreads any drift of the machine's load over all cases alike,
    which matters for ratios measured in one run.
    """
    for name, warm in (warmups or {}).items():
        t = time.perf_counter()
        warm()
        print(f"  warm-up {name}: {time.perf_counter() - t:.2f} s", flush=True)
    out = {name: Timing() for name in cases}
    for r in range(repeats):
        for name, fn in cases.items():
            t = time.perf_counter()
            fn()
            out[name].seconds.append(time.perf_counter() - t)
            print(f"  repeat {r + 1}/{repeats} {name}: {out[name].seconds[-1]:.2f} s", flush=True)
    return out


# --------------------------------------------------------------------------- report


def _cgroup_cpus() -> float | None:
    """CPU quota of the container (cgroup v2 cpu.max), when one is set."""
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()
    except (OSError, ValueError):
        return None
    return None if quota == "max" else round(int(quota) / int(period), 2)


def machine() -> dict[str, Any]:
    """Facts that make a number comparable: cores, CPU model, TF version, GPUs, load."""
    import tensorflow as tf

    from bloodlib.study import provenance

    hw = provenance.hardware()
    return {
        "cpu_model": hw["cpu_model"],
        "logical_cores": hw["logical_cores"],
        "usable_cores": hw["usable_cores"],
        "cgroup_cpus": _cgroup_cpus(),
        "ram_gb": hw["ram_gb"],
        "cpu_flags": hw["cpu_flags"],
        "tf_gpus": [d.name for d in tf.config.list_physical_devices("GPU")],
        "nvidia_gpus": hw["gpus"],
        "tensorflow": tf.__version__,
        "keras": _version("keras"),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "tf_intra_op_threads": tf.config.threading.get_intra_op_parallelism_threads(),
        "loadavg_start": [round(x, 2) for x in os.getloadavg()],
        "git": provenance.git_info(),
    }


def _version(name: str) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


@dataclass
class Check:
    name: str
    value: float
    target: float
    #: Whether this run matches the conditions the target is defined for.
    applies: bool = True
    condition: str = ""

    @property
    def passed(self) -> bool:
        return bool(self.value >= self.target)

    @property
    def verdict(self) -> str:
        v = "PASS" if self.passed else "FAIL"
        return v if self.applies else f"{v} (n/a)"


class Report:
    """Rows of (metric, value, unit, note), target checks, and the machine facts."""

    def __init__(self, bench: str, args: argparse.Namespace):
        self.bench = bench
        self.args = args
        self.started = datetime.now(timezone.utc)
        self.machine = machine()
        self.rows: list[tuple[str, float, str, str]] = []
        self.checks: list[Check] = []
        self.extra: dict[str, Any] = {}

    def add(self, metric: str, value: float, unit: str = "", note: str = "") -> None:
        self.rows.append((metric, float(value), unit, note))

    def check(self, name: str, value: float, target: float, *, applies=True, condition="") -> Check:
        c = Check(name, float(value), float(target), bool(applies), condition)
        self.checks.append(c)
        return c

    def print(self) -> None:
        m = self.machine
        gpus = ", ".join(m["tf_gpus"]) or "none"
        print()
        print(f"== {self.bench}")
        print(
            f"machine: {m['cpu_model']}; {m['usable_cores']} usable of {m['logical_cores']} cores"
            + (f" (cgroup quota {m['cgroup_cpus']} CPUs)" if m["cgroup_cpus"] else "")
            + f"; GPUs: {gpus}; TensorFlow {m['tensorflow']}, Keras {m['keras']}"
        )
        a = self.args
        print(
            f"setup: {a.backbone} at {a.image_size}"
            # a centre crop (bench_classify --crop) changes what the network computes on
            + (f", centre {a.crop:g} of the frame" if getattr(a, "crop", 1.0) < 1 else "")
            + f", N={a.images}, batch {a.batch_size}, "
            f"{a.repeats} repeat(s); data {a.data}"
        )
        print(
            f"load average: {m['loadavg_start']} at start, "
            f"{[round(x, 2) for x in os.getloadavg()]} now"
            " (a busy machine lowers absolute numbers; ratios suffer less)"
        )
        w = max(len(r[0]) for r in self.rows) if self.rows else 10
        print()
        print(f"{'metric':<{w}}  {'value':>12}  unit")
        print(f"{'-' * w}  {'-' * 12}  ----")
        for metric, value, unit, note in self.rows:
            line = f"{metric:<{w}}  {_fmt(value):>12}  {unit}"
            print(line + (f"   ({note})" if note else ""))
        if self.checks:
            print()
            for c in self.checks:
                line = f"target {c.name}: {_fmt(c.value)} >= {_fmt(c.target)}  {c.verdict}"
                if not c.applies:
                    line += f"  [target defined for {c.condition}]"
                print(line)
        print(flush=True)

    def as_dict(self) -> dict[str, Any]:
        args = {k: str(v) if isinstance(v, Path) else v for k, v in vars(self.args).items()}
        self.machine["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
        return {
            "bench": self.bench,
            "started": self.started.isoformat(timespec="seconds"),
            "seconds": round((datetime.now(timezone.utc) - self.started).total_seconds(), 1),
            "args": args,
            "machine": self.machine,
            "results": [
                {"metric": m, "value": v, "unit": u, "note": n} for m, v, u, n in self.rows
            ],
            "targets": [
                {
                    "name": c.name,
                    "value": c.value,
                    "target": c.target,
                    "passed": c.passed,
                    "applies": c.applies,
                    "condition": c.condition,
                }
                for c in self.checks
            ],
            **self.extra,
        }

    def finish(self) -> int:
        """Print, write --json, and return the exit code (1 on a failed target with --strict)."""
        self.print()
        if self.args.json:
            from bloodlib.core.io import write_json

            path = write_json(
                self.args.json, json.loads(json.dumps(self.as_dict(), default=_jsonable))
            )
            print(f"results written to {path}")
        failed = [c for c in self.checks if c.applies and not c.passed]
        return 1 if (self.args.strict and failed) else 0


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def _fmt(x: float) -> str:
    if x != x or x in (float("inf"), float("-inf")):
        return str(x)
    if abs(x) >= 100:
        return f"{x:,.1f}"
    if abs(x) >= 1:
        return f"{x:.2f}"
    if x and abs(x) < 0.001:
        return f"{x:.2e}"
    return f"{x:.3f}"


def target_conditions(
    args: argparse.Namespace,
    *,
    backbone: str | None = None,
    size: int | None = None,
    cores: int | None = None,
    cpu_only: bool = False,
) -> tuple[bool, str]:
    """(applies, condition): does this run match what a target is defined for?"""
    import tensorflow as tf

    from bloodlib.study import provenance

    parts, ok = [], True
    if backbone:
        parts.append(backbone)
        ok &= args.backbone == backbone
    if size:
        parts.append(f"at {size}")
        ok &= args.image_size == size
    if cores:
        parts.append(f"on {cores} CPU cores")
        ok &= provenance.hardware()["usable_cores"] == cores
        ok &= args.threads in (0, cores)  # --threads 1 would not use both cores
    if cores or cpu_only:
        parts.append("(CPU only)" if cores else "on CPU")
        ok &= not tf.config.list_physical_devices("GPU")
    return bool(ok), " ".join(parts)
