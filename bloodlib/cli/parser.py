"""The command line's parser: one function per command, each naming its options and help.

Imports nothing heavy: ``--help`` answers instantly (profiles come from the YAML file alone).
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import Any

from bloodlib.cli import commands
from bloodlib.core.config import NOTEBOOKS_DIR
from bloodlib.study.profiles import profile_names

#: Help text of --trust-pickle, shared by the commands that load models.
TRUST_PICKLE_HELP = (
    "allow an old pickled SVM (.joblib). DANGER: unpickling runs any code hidden in the "
    "file; use only for a file you made yourself or fully trust"
)


def at_least_one(text: str) -> int:
    """argparse type: an integer >= 1 (a batch size or worker count of 0 is a usage error)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not at least 1")
    return value


def probability(text: str) -> float:
    """argparse type: a number in 0..1."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"{value} is not a probability in 0..1")
    return value


def _finite(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{value} is not a finite number")
    return value


def positive(text: str) -> float:
    """argparse type: a finite number above 0 (a learning rate)."""
    value = _finite(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{value} is not above 0")
    return value


def non_negative(text: str) -> float:
    """argparse type: a finite number of 0 or more (a weight)."""
    value = _finite(text)
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"{value} is negative")
    return value


#: Help text of --force, shared by the commands that write a model.
FORCE_HELP = (
    "replace an existing model at --out that is not an earlier result of this same command "
    "(re-running the same command replaces its own output without it)"
)


def build_parser() -> argparse.ArgumentParser:
    """``bloodlib COMMAND ...``: every command's sub-parser; ``--debug`` before or after it."""
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
    for add in (
        _add_run,
        _add_kernel,
        _add_classify,
        _add_adapt,
        _add_ensemble,
        _add_convert_model,
        _add_export,
        _add_report,
        _add_docs,
        _add_pretrain,
        _add_scan,
        _add_sample_info,
    ):
        add(sub, common)
    return parser


def _add_run(sub: Any, common: argparse.ArgumentParser) -> None:
    run = sub.add_parser(
        "run",
        parents=[common],
        help="run (or resume) the study notebooks into runs/NAME",
        description="Execute the numbered notebooks in order with papermill. Unchanged, "
        "finished notebooks are skipped; a change re-runs that notebook and every later one.",
    )
    run.add_argument("--profile", choices=profile_names(), default="sample")
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
        default=NOTEBOOKS_DIR,
        help="where the numbered notebooks are (default: the checkout's notebooks/)",
    )
    run.add_argument("--no-progress", action="store_true", help="no per-cell progress bars")
    run.add_argument(
        "--dry-run", action="store_true", help="print each notebook's parameters and stop"
    )
    run.set_defaults(func=commands.cmd_run)


def _add_kernel(sub: Any, common: argparse.ArgumentParser) -> None:
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
    kernel.set_defaults(func=commands.cmd_kernel)


def _add_classify(sub: Any, common: argparse.ArgumentParser) -> None:
    classify = sub.add_parser(
        "classify", parents=[common], help="classify a folder of images with a saved model"
    )
    classify.add_argument(
        "model",
        help="a saved model (e.g. runs/sample/models/*.keras), or pbc-lite0 (ships with bloodlib)",
    )
    classify.add_argument("folder", help="folder of images (searched recursively)")
    classify.add_argument("--out", required=True, metavar="CSV", help="predictions CSV to write")
    classify.add_argument("--batch-size", type=at_least_one, default=32, metavar="N")
    classify.add_argument(
        "--workers", type=at_least_one, metavar="N", help="threads that inspect the files"
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
        type=probability,
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
        "compute; the steadiest with no labelled cell on tecom: docs/other-labs.md)",
    )
    lab.add_argument(
        "--rescale-cell",
        action="store_true",
        help="fine-tuned networks: zoom every image by one factor so the folder's cells "
        "(their stained nuclei) match PBC's size in the frame",
    )
    classify.set_defaults(func=commands.cmd_classify)


def _add_adapt(sub: Any, common: argparse.ArgumentParser) -> None:
    adapt = sub.add_parser(
        "adapt",
        parents=[common],
        help="fine-tune a saved network on a few labelled cells of a new lab",
        description="Train a fine-tuned .keras model's head (and what --train names with it) "
        "on K labelled cells per class of FOLDER (one sub-folder per class, "
        "any subset of the classes); the other cells are held out and scored before and after. "
        "Writes NEW_MODEL with a sidecar recording the base model and the cells used.",
    )
    adapt.add_argument(
        "model", help="a fine-tuned model (e.g. runs/NAME/models/*.keras), or pbc-lite0"
    )
    adapt.add_argument("folder", help="labelled cells of the new lab, one sub-folder per class")
    adapt.add_argument("--out", required=True, metavar="NEW_MODEL.keras", help="model to write")
    adapt.add_argument(
        "--shots", type=at_least_one, metavar="K", help="labelled cells per class used (default 5)"
    )
    adapt.add_argument(
        "--epochs",
        type=at_least_one,
        metavar="E",
        help="passes over those cells (default: as many as give 200 Adam steps for --train "
        "top and block, 80 for head and bn)",
    )
    adapt.add_argument(
        "--steps",
        type=at_least_one,
        metavar="N",
        help="about N Adam steps instead (the epochs follow; not with --epochs)",
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
        type=positive,
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
        type=non_negative,
        metavar="W",
        help="weight of that entropy in the loss (default 0.3; needs --unlabelled)",
    )
    adapt.add_argument("--force", action="store_true", help=FORCE_HELP)
    adapt.add_argument("--verbose", action="store_true", help="show the training's progress")
    adapt.set_defaults(func=commands.cmd_adapt)


def _add_ensemble(sub: Any, common: argparse.ArgumentParser) -> None:
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
    ensemble.add_argument("--force", action="store_true", help=FORCE_HELP)
    ensemble.set_defaults(func=commands.cmd_ensemble)


def _add_convert_model(sub: Any, common: argparse.ArgumentParser) -> None:
    convert = sub.add_parser(
        "convert-model",
        parents=[common],
        help="re-save an old pickled SVM (.joblib) as .skops, which loads without running code",
    )
    convert.add_argument("model", help="the .joblib model (its .json sidecar beside it)")
    convert.add_argument("--trust-pickle", action="store_true", help=TRUST_PICKLE_HELP)
    convert.set_defaults(func=commands.cmd_convert_model)


def _add_export(sub: Any, common: argparse.ArgumentParser) -> None:
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
    export.set_defaults(func=commands.cmd_export)


def _add_scan(sub: Any, common: argparse.ArgumentParser) -> None:
    scan = sub.add_parser(
        "scan", parents=[common], help="scan a dataset: class counts and quality checks"
    )
    scan.add_argument("--data", default="sample", help="'sample', 'mendeley', a folder or a zip")
    scan.set_defaults(func=commands.cmd_scan)


def _add_sample_info(sub: Any, common: argparse.ArgumentParser) -> None:
    info = sub.add_parser("sample-info", parents=[common], help="describe the embedded sample")
    info.set_defaults(func=commands.cmd_sample_info)


def _add_report(sub: Any, common: argparse.ArgumentParser) -> None:
    report = sub.add_parser(
        "report",
        parents=[common],
        help="write a run's summary (models, scope, figures) as Markdown and HTML",
        description="Summarise a finished run folder: every model's accuracy with its interval, "
        "balanced accuracy, macro F1, calibration before and after temperature scaling, "
        "training time; the data, split, seed, machine, versions and commit; the main figures. "
        "Writes RUN/report.md and RUN/report.html (or the formats asked for).",
    )
    report.add_argument("run", help="a run folder (e.g. runs/sample)")
    report.add_argument(
        "--format",
        action="append",
        choices=("md", "html", "json"),
        help="md, html or json; repeatable (default: md and html)",
    )
    report.set_defaults(func=commands.cmd_report)


def _add_docs(sub: Any, common: argparse.ArgumentParser) -> None:
    docs = sub.add_parser(
        "docs",
        parents=[common],
        help="re-render the README's and docs' result tables from docs/results/*.json",
        description="Rewrite every generated block (<!-- generated: NAME --> ... <!-- end "
        "generated -->) of README.md and docs/*.md from the run summaries committed in "
        "docs/results/ (python -m bloodlib report RUN --format json). In a checkout only.",
    )
    docs.add_argument(
        "--check",
        action="store_true",
        help="write nothing; exit 1 when a block disagrees with its summary",
    )
    docs.set_defaults(func=commands.cmd_docs)


def _add_pretrain(sub: Any, common: argparse.ArgumentParser) -> None:
    pretrain = sub.add_parser(
        "pretrain",
        parents=[common],
        help="make the network that ships with bloodlib (pbc-lite0) from a PBC folder",
        description="Fine-tune EfficientNet-Lite0 with the full profile's recipe on a PBC folder "
        "(the embedded sample's test cells held out), score it on the test split and write it "
        "with its sidecar to bloodlib/models/shipped/NAME.keras. About 15 minutes on 2 CPU cores "
        "for the 6,837-image dev data; the training folder runs/pretrain-NAME resumes.",
    )
    pretrain.add_argument("--data", required=True, help="a PBC folder or zip (not the sample)")
    pretrain.add_argument("--name", default="pbc-lite0", help="the shipped network's name")
    pretrain.add_argument("--runs-root", default="runs", help="where the training folder goes")
    pretrain.set_defaults(func=commands.cmd_pretrain)
