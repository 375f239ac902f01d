"""Every parameter of a run checked before anything is written: its type (that of the
notebook's default) and its range (:data:`PARAMETER_RULES`, with the reason), and the run's
name (one folder inside the runs folder).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bloodlib.study.profiles import (
    ParameterError,
)


@dataclass(frozen=True)
class Rule:
    """What a parameter's value must satisfy beyond its type, and why."""

    why: str
    minimum: float | None = None
    above: float | None = None  # strictly greater than
    below: float | None = None  # strictly less than
    maximum: float | None = None
    nullable: bool = False  # None is meaningful (e.g. "the backbone's native size")
    check: Callable[[Any], str | None] | None = None  # returns a problem, or None


def _fractions_problem(value: Any) -> str | None:
    from bloodlib.data.split import _check_fractions  # the split's own rule, in one place

    try:
        _check_fractions(tuple(value))
    except (TypeError, ValueError) as exc:
        return str(exc)
    return None


def _names_problem(value: Any) -> str | None:
    if not value or not all(isinstance(v, str) and v for v in value):
        return "expected a non-empty list of backbone names, e.g. [efficientnet_lite0]"
    return None


def _shots_problem(value: Any, empty_ok: bool = False) -> str | None:
    if not isinstance(value, list) or not (value or empty_ok):
        kind = "a list" if empty_ok else "a non-empty list"
        return f"expected {kind} of cells per class, e.g. [1, 5, 20]"
    if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in value):
        return f"every number of shots must be an integer >= 1, got {value!r}"
    return None


def _folder_problem(value: Any) -> str | None:
    if not isinstance(value, str) or not value:
        return "expected a folder path (class layout: one sub-folder per class)"
    if not Path(value).expanduser().is_dir():
        return f"folder not found: {value} (relative paths are read from where you run bloodlib)"
    return None


#: Parameters naming a folder: checked from the caller's working directory, then passed to
#: the notebook as an absolute path (its kernel runs in the notebooks' folder).
FOLDER_PARAMETERS = ("other_lab",)


#: Ranges of the study's parameters, by name (whichever notebook declares them). Types come
#: from each notebook's parameters cell; these rules add what a type cannot say.
PARAMETER_RULES: dict[str, Rule] = {
    "seed": Rule("NumPy and TensorFlow seeds are non-negative integers", minimum=0),
    "epochs_head": Rule("a number of epochs (0 skips the head phase)", minimum=0),
    "epochs_finetune": Rule("a number of epochs (0 skips fine-tuning)", minimum=0),
    "batch_size": Rule("a batch holds at least one image", minimum=1),
    "learning_rate_head": Rule("a learning rate must be positive", above=0),
    "learning_rate_finetune": Rule("a learning rate must be positive", above=0),
    "label_smoothing": Rule("a fraction of the target mass, 0 (off) up to below 1", 0, below=1),
    "ema_momentum": Rule("the average's momentum, 0 (off) up to below 1", 0, below=1),
    "warmup_epochs": Rule("epochs of learning-rate warm-up in phase 2 (0: none)", minimum=0),
    "unfreeze_from_block": Rule("a block index (0 unfreezes the whole backbone)", minimum=0),
    "image_size": Rule(
        "pixels per side: ImageNet backbones need at least 32; null is each backbone's native",
        minimum=32,
        nullable=True,
    ),
    "crop": Rule(
        "the centre fraction of the frame's side the network sees; 1.0: the whole frame",
        above=0,
        maximum=1,
    ),
    "max_train_images": Rule("a cap on training images; null uses all", minimum=1, nullable=True),
    "n_boot": Rule("bootstrap resamples for confidence intervals", minimum=1),
    "n_seeds": Rule(
        "training runs per model (seeds seed .. seed + n_seeds - 1, one split); 1: one run",
        minimum=1,
    ),
    "svm_cv": Rule("cross-validation needs at least two folds", minimum=2),
    "split_fractions": Rule("(train, val, test) fractions of the data", check=_fractions_problem),
    "backbones": Rule("backbones of bloodlib.models.backbones.REGISTRY", check=_names_problem),
    "shots": Rule("labelled cells per class for adapting, each at least 1", check=_shots_problem),
    "unlabelled_shots": Rule(
        "labelled cells per class for adapting with the lab's unlabelled cells too; [] skips",
        check=lambda v: _shots_problem(v, empty_ok=True),
    ),
    "adapt_repeats": Rule("draws of support cells per number of shots", minimum=1),
    "adapt_steps": Rule(
        "Adam steps per adaptation, at least 1; null: adapt's default for adapt_train",
        minimum=1,
        nullable=True,
    ),
    "other_lab": Rule(
        "a folder of another lab's cells in the class layout; null: a synthetic lab",
        nullable=True,
        check=_folder_problem,
    ),
}


#: Marks "the profile does not set this parameter" (None is a value a profile can give).
ABSENT: Any = object()


_TYPE_NAMES = {bool: "a boolean", int: "an integer", float: "a number", str: "a string"}
_TYPE_NAMES.update({list: "a list", dict: "a mapping"})


def _type_name(kind: type) -> str:
    return _TYPE_NAMES.get(kind, kind.__name__)


def _type_ok(value: Any, kind: type) -> bool:
    if kind is bool:
        return isinstance(value, bool)
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if kind is float:  # an integer is a fine float: -p learning_rate_head=1
        return isinstance(value, int | float) and not isinstance(value, bool)
    return isinstance(value, kind)


def check_parameter(
    where: str,
    key: str,
    value: Any,
    default: Any = None,
    has_default: bool = False,
    profile_value: Any = ABSENT,
) -> None:
    """Raise :class:`ParameterError` unless ``value`` fits ``key``'s type and rule.

    The expected type is that of the notebook's default; a ``None`` default takes the
    profile's type, if it gives one. ``None`` is accepted where the default or the profile
    is ``None`` or the rule says it is meaningful.
    """
    rule = PARAMETER_RULES.get(key)
    name = f"{where}.{key}"
    shown = f"{value!r}" if not isinstance(value, str) else f"'{value}'"
    if value is None:
        nullable = rule is not None and rule.nullable
        if (has_default and default is None) or profile_value is None or nullable:
            return
        expected = default if has_default else profile_value
        if expected is ABSENT:
            return  # nothing says what type this parameter has
        raise ParameterError(
            f"parameter {name} = null: expected {_type_name(type(expected))} "
            f"(the default is {expected!r}); pass a value, e.g. -p {name}={expected}"
        )
    reference = default if has_default and default is not None else profile_value
    if reference is ABSENT:
        reference = None
    if reference is not None and not _type_ok(value, type(reference)):
        raise ParameterError(
            f"parameter {name} = {shown}: expected {_type_name(type(reference))} "
            f"(like the default {reference!r}), got {_type_name(type(value))}. "
            f"Fix the value, e.g. -p {name}={reference!r}"
        )
    if rule is None:
        return
    problem = rule.check(value) if rule.check else None
    numeric = isinstance(value, int | float) and not isinstance(value, bool)
    bounded = (rule.minimum, rule.above, rule.below, rule.maximum) != (None,) * 4
    if problem is None and bounded and not numeric:
        # A None default gives no type to check against; a bounded rule still means a number.
        problem = f"must be a number, not {_type_name(type(value))}"
    elif problem is None and numeric:
        if not math.isfinite(value):
            problem = "must be a finite number"
        elif rule.minimum is not None and value < rule.minimum:
            problem = f"must be >= {rule.minimum}"
        elif rule.above is not None and value <= rule.above:
            problem = f"must be > {rule.above}"
        elif rule.below is not None and value >= rule.below:
            problem = f"must be < {rule.below}"
        elif rule.maximum is not None and value > rule.maximum:
            problem = f"must be <= {rule.maximum}"
    if problem:
        raise ParameterError(f"parameter {name} = {shown} {problem} ({rule.why})")


def check_run_name(name: str) -> str:
    """``name`` if it names one folder directly inside the runs folder, else ParameterError."""
    bad = (
        not name
        or name != name.strip()
        or name.startswith(".")  # ".", ".." and hidden folders
        or any(sep in name for sep in ("/", "\\", os.sep, os.altsep or "/", "\0"))
        or Path(name).is_absolute()
    )
    if bad:
        raise ParameterError(
            f"bad run name {name!r}: --name must name one folder inside the runs folder "
            "(not empty, no '/' or '\\', not '..', not hidden, not absolute), e.g. --name "
            "my-run. Use --runs-root to put runs elsewhere."
        )
    return name


def run_dir_for(runs_root: str | os.PathLike, name: str | None, profile: str) -> Path:
    """The run folder ``runs_root/NAME`` (absolute), refusing names that would leave it."""
    root = Path(runs_root).resolve()
    run_dir = (root / check_run_name(name if name is not None else profile)).resolve()
    if run_dir.parent != root:  # e.g. a symlink named like a run
        raise ParameterError(f"run folder {run_dir} is not inside {root}; choose another --name")
    return run_dir
