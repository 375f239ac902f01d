"""Command line: ``python -m bloodlib <command>`` (also installed as ``bloodlib``).

Every heavy import (papermill, TensorFlow, pandas) happens inside the command that needs it,
so ``--help`` answers instantly.
"""

from __future__ import annotations

import argparse
import sys
import textwrap
import zipfile
from collections.abc import Sequence
from pathlib import Path

import yaml

import bloodlib
from bloodlib.core.errors import BloodlibError

PROFILES_FILE = Path(__file__).parent / "study" / "profiles.yml"


class CliError(BloodlibError):
    """A user-facing error raised by the CLI itself."""


def _profiles() -> list[str]:
    # Read the yml directly: importing bloodlib.study.runner would pull numpy in for --help.
    with open(PROFILES_FILE, encoding="utf-8") as fh:
        return list(yaml.safe_load(fh) or {})


# --- commands ----------------------------------------------------------------------------


def cmd_run(args: argparse.Namespace) -> int:
    from bloodlib.study import runner

    overrides = dict(runner.parse_override(p) for p in args.param)
    if args.dry_run:  # the same checks as a real run, and nothing is written
        run_dir = runner.run_dir_for(args.runs_root, args.name, args.profile)
        plans = runner.plan_study(
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
    from bloodlib.train.adapt import AdaptError, adapt

    if args.entropy_weight is not None and args.unlabelled is None:
        raise AdaptError("--entropy-weight weighs the unlabelled cells: give --unlabelled FOLDER")
    # Unset options take adapt()'s defaults, so each default is stated once, there.
    given = {
        "shots": args.shots,
        "epochs": args.epochs,
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
        verbose=2 if args.verbose else 0,
        **{k: v for k, v in given.items() if v is not None},
    )
    print(result.report())
    return 0


def cmd_ensemble(args: argparse.Namespace) -> int:
    from bloodlib.models.ensemble import build_ensemble

    print(build_ensemble(args.models, args.out).report())
    return 0


def _probability(text: str) -> float:
    """argparse type: a number in 0..1."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"{value} is not a probability in 0..1")
    return value


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


def _at_least_one(text: str) -> int:
    """argparse type: an integer >= 1 (a batch size or worker count of 0 is a usage error)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not at least 1")
    return value


#: Help text of --trust-pickle, shared by the commands that load models.
TRUST_PICKLE_HELP = (
    "allow an old pickled SVM (.joblib). DANGER: unpickling runs any code hidden in the "
    "file; use only for a file you made yourself or fully trust"
)


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


# --- parser ------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    # --debug is accepted before or after the command name.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--debug", action="store_true", default=argparse.SUPPRESS, help="show full tracebacks"
    )
    parser = argparse.ArgumentParser(
        prog="bloodlib",
        description="Peripheral blood cell recognition: run the study notebooks and tools.",
        parents=[common],
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser(
        "run",
        parents=[common],
        help="run (or resume) the study notebooks into runs/NAME",
        description="Execute the numbered notebooks in order with papermill. Unchanged, "
        "finished notebooks are skipped; a change re-runs that notebook and every later one.",
    )
    run.add_argument("--profile", choices=_profiles(), default="sample")
    run.add_argument(
        "--data", help="'sample', 'mendeley', a dataset folder or a zip (required for full/paper)"
    )
    run.add_argument("--name", help="run folder name under --runs-root (default: the profile)")
    run.add_argument("--kernel", help="Jupyter kernel name (default: the notebooks' own)")
    run.add_argument("--params", metavar="FILE.yml", help="YAML parameters, flat or per notebook")
    run.add_argument(
        "-p",
        "--param",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a parameter (VALUE is YAML; NOTEBOOK.KEY=VALUE scopes it); repeatable",
    )
    run.add_argument("--force", action="store_true", help="re-run every notebook")
    run.add_argument("--runs-root", default="runs", help="folder holding run folders (runs)")
    run.add_argument(
        "--notebooks-dir",
        type=Path,
        default=Path(__file__).resolve().parent.parent / "notebooks",
        help="where the numbered notebooks are (default: the checkout's notebooks/)",
    )
    run.add_argument("--no-progress", action="store_true", help="no per-cell progress bars")
    run.add_argument(
        "--dry-run", action="store_true", help="print each notebook's parameters and stop"
    )
    run.set_defaults(func=cmd_run)

    kernel = sub.add_parser(
        "kernel", parents=[common], help="register this Python as a Jupyter kernel"
    )
    kernel.add_argument("--name", default="bloodlib", help="kernel name (default: bloodlib)")
    kernel.add_argument("--display-name", help="name shown in Jupyter")
    scope = kernel.add_mutually_exclusive_group()
    scope.add_argument("--user", action="store_true", help="install for the current user (default)")
    scope.add_argument(
        "--sys-prefix", action="store_true", help="install into this environment only"
    )
    kernel.set_defaults(func=cmd_kernel)

    classify = sub.add_parser(
        "classify", parents=[common], help="classify a folder of images with a saved model"
    )
    classify.add_argument("model", help="a saved model (e.g. runs/sample/models/*.keras)")
    classify.add_argument("folder", help="folder of images (searched recursively)")
    classify.add_argument("--out", required=True, metavar="CSV", help="predictions CSV to write")
    classify.add_argument("--batch-size", type=_at_least_one, default=32, metavar="N")
    classify.add_argument(
        "--workers", type=_at_least_one, metavar="N", help="threads that inspect the files"
    )
    classify.add_argument("--trust-pickle", action="store_true", help=TRUST_PICKLE_HELP)
    classify.add_argument(
        "--engine",
        choices=("auto", "keras", "tflite"),
        default="auto",
        help="fine-tuned networks: auto = TFLite (XNNPACK) on a CPU-only machine, Keras on a GPU",
    )
    classify.add_argument(
        "--tta",
        action="store_true",
        help="fine-tuned networks: average over the 8 flips and 90-degree rotations (8x slower)",
    )
    lab = classify.add_argument_group("another lab's cells")
    lab.add_argument(
        "--classes",
        metavar="A,B,C",
        help="predict only these classes (comma-separated, any case), e.g. the white cells a "
        "lab counts; probabilities are renormalised over them and metrics scored among them",
    )
    lab.add_argument(
        "--reject-below",
        type=_probability,
        metavar="P",
        help="mark cells whose probability is below P 'uncertain' (default: the threshold "
        "stored in the model's sidecar, if any; 0 turns rejection off)",
    )
    lab.add_argument(
        "--normalize",
        # stain.NORMALIZE_METHODS, written out so that --help imports no numpy (a test
        # checks that the two agree)
        choices=("none", "reinhard", "macenko", "reinhard+macenko"),
        help="fine-tuned networks: move colours to PBC's before the model. reinhard: each "
        "image's mean and spread per CIELAB channel; macenko: the two stains, estimated "
        "once from up to 64 of the folder's cells, re-coloured with PBC's; "
        "reinhard+macenko: predict after each and multiply the probabilities (twice the "
        "compute; the steadiest with no labelled cell on tecom: README)",
    )
    lab.add_argument(
        "--rescale-cell",
        action="store_true",
        help="fine-tuned networks: zoom every image by one factor so the folder's cells "
        "(their stained nuclei) match PBC's size in the frame",
    )
    classify.set_defaults(func=cmd_classify)

    adapt = sub.add_parser(
        "adapt",
        parents=[common],
        help="fine-tune a saved network on a few labelled cells of a new lab",
        description="Train a fine-tuned .keras model's head (and what --train names with it) "
        "on K labelled cells per class of FOLDER (one sub-folder per class, "
        "any subset of the classes); the other cells are held out and scored before and after. "
        "Writes NEW_MODEL with a sidecar recording the base model and the cells used.",
    )
    adapt.add_argument("model", help="a fine-tuned model (e.g. runs/NAME/models/*.keras)")
    adapt.add_argument("folder", help="labelled cells of the new lab, one sub-folder per class")
    adapt.add_argument("--out", required=True, metavar="NEW_MODEL.keras", help="model to write")
    adapt.add_argument(
        "--shots", type=_at_least_one, metavar="K", help="labelled cells per class used (default 5)"
    )
    adapt.add_argument(
        "--epochs",
        type=_at_least_one,
        metavar="E",
        help="passes over those cells (default: as many as give 200 Adam steps for --train "
        "top and block, 80 for head and bn)",
    )
    adapt.add_argument("--seed", type=int, metavar="S", help="seed of the draw and the training")
    adapt.add_argument(
        "--train",
        choices=("head", "top", "block", "bn"),
        help="what learns: 'block' (default): the head, the backbone's last block and the "
        "convolution after it; 'top': the head and the backbone's last convolution; "
        "'head': the head only; 'bn': the head and the BatchNorm layers",
    )
    adapt.add_argument(
        "--learning-rate",
        type=float,
        metavar="LR",
        help="Adam's learning rate (default 0.003 for top, 0.0005 for block, 0.03 for head and bn)",
    )
    adapt.add_argument(
        "--unlabelled",
        metavar="FOLDER",
        help="the lab's cells without labels (any layout; may be FOLDER itself, whose labels "
        "are then not read): the loss also lowers the entropy of the predictions on them",
    )
    adapt.add_argument(
        "--entropy-weight",
        type=float,
        metavar="W",
        help="weight of that entropy in the loss (default 0.3; needs --unlabelled)",
    )
    adapt.add_argument("--verbose", action="store_true", help="show the training's progress")
    adapt.set_defaults(func=cmd_adapt)

    ensemble = sub.add_parser(
        "ensemble",
        parents=[common],
        help="average several fine-tuned networks (e.g. a run's training seeds) into one model",
        description="Write one .keras model whose output is the mean of the members' class "
        "probabilities, with a sidecar listing each member's name, seed and SHA-256. The members "
        "must be fine-tuned networks with the same classes, backbone, input size and weights "
        "(e.g. runs/NAME/models/*_finetune.keras and *_finetune_seed<N>.keras of a run with "
        "-p n_seeds=3). classify, export and notebook 04's scoring take it as one model.",
    )
    ensemble.add_argument("models", nargs="+", metavar="MODEL", help="fine-tuned .keras models")
    ensemble.add_argument("--out", required=True, metavar="ENSEMBLE.keras", help="model to write")
    ensemble.set_defaults(func=cmd_ensemble)

    convert = sub.add_parser(
        "convert-model",
        parents=[common],
        help="re-save an old pickled SVM (.joblib) as .skops, which loads without running code",
    )
    convert.add_argument("model", help="the .joblib model (its .json sidecar beside it)")
    convert.add_argument("--trust-pickle", action="store_true", help=TRUST_PICKLE_HELP)
    convert.set_defaults(func=cmd_convert_model)

    export = sub.add_parser(
        "export",
        parents=[common],
        help="export a fine-tuned model to TFLite, ONNX or a TF SavedModel, with its sidecar",
        description="Write a fine-tuned .keras model in a format usable outside Python, with a "
        "copy of its sidecar beside it (OUT.json), after checking that its outputs match Keras "
        "on a few cells. Input: float32 RGB 0..255 at the sidecar's image_size.",
    )
    export.add_argument("model", help="a fine-tuned model (e.g. runs/NAME/models/*_finetune.keras)")
    export.add_argument("--format", required=True, choices=("tflite", "onnx", "savedmodel"))
    export.add_argument(
        "--out", required=True, metavar="PATH", help="file (.tflite, .onnx) or SavedModel folder"
    )
    export.add_argument(
        "--force", action="store_true", help="replace an existing file that is not this export"
    )
    export.set_defaults(func=cmd_export)

    scan = sub.add_parser(
        "scan", parents=[common], help="scan a dataset: class counts and quality checks"
    )
    scan.add_argument("--data", default="sample", help="'sample', 'mendeley', a folder or a zip")
    scan.set_defaults(func=cmd_scan)

    info = sub.add_parser("sample-info", parents=[common], help="describe the embedded sample")
    info.set_defaults(func=cmd_sample_info)
    return parser


def _one_paragraph(message: str) -> str:
    """``error: ...`` wrapped at 100 columns; line breaks the message chose are kept."""
    lines = [" ".join(line.split()) for line in str(message).strip().splitlines()] or [""]
    lines[0] = f"error: {lines[0] or 'unknown error'}"
    return "\n".join(
        textwrap.fill(line, width=100, break_long_words=False, break_on_hyphens=False)
        for line in lines
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    debug = getattr(args, "debug", False)
    try:
        return args.func(args)
    except KeyboardInterrupt:
        if debug:
            raise
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        if isinstance(exc, BloodlibError):
            code = exc.exit_code
        elif isinstance(exc, ModuleNotFoundError) and (exc.name or "").startswith("bloodlib"):
            code, exc = 1, CliError(f"{exc.name} is not available in this checkout ({exc})")
        elif isinstance(exc, OSError | ValueError | zipfile.BadZipFile) or (
            type(exc).__module__.startswith("bloodlib.")
        ):
            code = 2  # the data layer reports bad input with these
        else:
            raise  # a bug: the traceback is the useful message
        if debug:
            raise
        print(_one_paragraph(str(exc)), file=sys.stderr)
        print("(run with --debug for the traceback)", file=sys.stderr)
        return code
