"""What each command does: one function per command, called with its parsed arguments.

Each imports the part of bloodlib it needs inside itself: papermill, TensorFlow and pandas
cost seconds, and ``--help`` must answer at once.
"""

from __future__ import annotations

import argparse
import sys

import yaml

import bloodlib
from bloodlib.core.errors import BloodlibError


class CliError(BloodlibError):
    """A user-facing error raised by the CLI itself."""


def cmd_run(args: argparse.Namespace) -> int:
    from bloodlib.study import parameters, planning, profiles, runner

    overrides = dict(profiles.parse_override(p) for p in args.param)
    if args.dry_run:  # the same checks as a real run, and nothing is written
        run_dir = parameters.run_dir_for(args.runs_root, args.name, args.profile)
        plans = planning.plan_study(
            args.profile, args.data, overrides, args.params, run_dir, args.notebooks_dir
        )
        print(yaml.safe_dump({p.name: p.parameters for p in plans}, sort_keys=False), end="")
        return 0
    runner.run_study(
        profile=args.profile,
        data=args.data,
        name=args.name,
        kernel=args.kernel,
        overrides=overrides,
        params_file=args.params,
        force=args.force,
        runs_root=args.runs_root,
        notebooks_dir=args.notebooks_dir,
        progress=not args.no_progress,
    )
    return 0


def _installed() -> bool:
    from importlib import metadata

    try:
        metadata.distribution("bloodlib")
    except metadata.PackageNotFoundError:
        return False
    return True


def cmd_kernel(args: argparse.Namespace) -> int:
    from ipykernel.kernelspec import install

    from bloodlib.core.config import REPO_ROOT

    display = args.display_name or "Python (bloodlib)"
    # Without a pip install (editable or not) the kernel only finds bloodlib via PYTHONPATH.
    env = None if _installed() else {"PYTHONPATH": str(REPO_ROOT)}
    where = install(
        user=not args.sys_prefix,
        prefix=sys.prefix if args.sys_prefix else None,
        kernel_name=args.name,
        display_name=display,
        env=env,
    )
    print(f"Installed Jupyter kernel {args.name!r} ({display}) for {sys.executable}")
    print(f"  spec: {where}")
    print(f"Use it with:  python -m bloodlib run --profile sample --kernel {args.name}")
    print(f"In Jupyter, pick the kernel '{display}'.")
    return 0


def cmd_classify(args: argparse.Namespace) -> int:
    from bloodlib.predict.classify import classify_folder

    # The options for another lab's cells are passed only when given, so the call with
    # none of them stays the one it has always been.
    lab = {
        "classes": args.classes,
        "reject_below": args.reject_below,
        "normalize": args.normalize,
        "rescale_cell": args.rescale_cell or None,
    }
    result = classify_folder(
        args.model,
        args.folder,
        args.out,
        batch_size=args.batch_size,
        workers=args.workers,
        engine=args.engine,
        tta=args.tta,
        trust_pickle=args.trust_pickle,
        **{k: v for k, v in lab.items() if v is not None},
    )
    print(result.report())
    return 0


def cmd_adapt(args: argparse.Namespace) -> int:
    from bloodlib.train.adapt import adapt
    from bloodlib.train.few_shot import AdaptError

    if args.entropy_weight is not None and args.unlabelled is None:
        raise AdaptError("--entropy-weight weighs the unlabelled cells: give --unlabelled FOLDER")
    # Unset options take adapt()'s defaults, so each default is stated once, there.
    given = {
        "shots": args.shots,
        "epochs": args.epochs,
        "steps": args.steps,
        "seed": args.seed,
        "train": args.train,
        "learning_rate": args.learning_rate,
        "unlabelled": args.unlabelled,
        "entropy_weight": args.entropy_weight,
    }
    result = adapt(
        args.model,
        args.folder,
        args.out,
        force=args.force,
        verbose=2 if args.verbose else 0,
        **{k: v for k, v in given.items() if v is not None},
    )
    print(result.report())
    return 0


def cmd_ensemble(args: argparse.Namespace) -> int:
    from bloodlib.models.ensemble import build_ensemble

    print(build_ensemble(args.models, args.out, force=args.force).report())
    return 0


def cmd_convert_model(args: argparse.Namespace) -> int:
    from bloodlib.models.saved import convert_pickle

    new = convert_pickle(args.model, trust_pickle=args.trust_pickle)
    print(f"converted {args.model} -> {new} (its sidecar now belongs to {new.name})")
    print(f"the pickle is no longer needed: delete {args.model}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from bloodlib.predict.export import export_model

    result = export_model(args.model, args.format, args.out, force=args.force)
    print(result.report())
    return 0


def cmd_scan(args: argparse.Namespace) -> int:
    import pandas as pd

    from bloodlib.data.manifest import scan
    from bloodlib.data.source import resolve

    result = scan(resolve(args.data))
    with pd.option_context("display.width", 120, "display.max_rows", 200):
        print(result.summary().to_string())
        print()
        quality = result.quality
        print("Quality checks:", "no defective files" if quality.empty else "")
        if not quality.empty:
            print(quality.to_string())
    return 0


def cmd_sample_info(args: argparse.Namespace) -> int:
    from bloodlib.core.config import SAMPLE_DIR

    if not SAMPLE_DIR.is_dir():
        raise CliError(f"the embedded sample is missing: {SAMPLE_DIR} does not exist")
    counts: dict[str, int] = {}
    size = 0
    for folder in sorted(p for p in SAMPLE_DIR.iterdir() if p.is_dir()):
        images = [p for p in folder.rglob("*") if p.suffix.lower() in bloodlib.IMAGE_SUFFIXES]
        counts[folder.name] = len(images)
        size += sum(p.stat().st_size for p in images)
    print(f"Embedded sample: {SAMPLE_DIR}")
    width = max((len(c) for c in counts), default=5)
    for cls, n in counts.items():
        print(f"  {cls:<{width}}  {n:5d} images")
    print(f"  {'total':<{width}}  {sum(counts.values()):5d} images, {size / 2**20:.1f} MiB")
    docs = [p.name for p in SAMPLE_DIR.iterdir() if p.is_file() and p.suffix in {".md", ".txt"}]
    if docs:
        print(f"About the sample (origin, licence): see {', '.join(sorted(docs))} in that folder.")
    print("Use it with:  python -m bloodlib run --profile sample   (or --data sample)")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from bloodlib.study import report

    for path in report.write(args.run, args.format or ("md", "html")):
        print(f"wrote {path}")
    return 0


def cmd_docs(args: argparse.Namespace) -> int:
    from bloodlib.study import doc_tables

    stale = doc_tables.refresh(write=not args.check)
    for path in stale:
        print(f"{'out of date' if args.check else 'rewrote'}: {path}")
    if args.check and stale:
        print("run `python -m bloodlib docs` to refresh them")
        return 1
    return 0


def cmd_pretrain(args: argparse.Namespace) -> int:
    from bloodlib.study.pretrain import pretrain

    out = pretrain(args.data, args.name, args.runs_root)
    print(f"wrote {out} and its sidecar")
    return 0
