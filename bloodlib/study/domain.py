"""Another lab's cells (notebook 05): how far a PBC model falls, why, and what each remedy buys.

The measurement behind issue 12, in pieces a notebook calls and a test can check:

- the other lab: a real folder in the class layout, or a *synthetic* one written from the
  run's PBC test cells (:func:`synthetic_lab`; ``look.other_lab``), with a fingerprint of
  its files (:func:`load_lab`);
- the shift itself: colour (CIELAB means and spreads) and size (the stained nucleus's share
  of the frame) of both labs' cells (:func:`cell_statistics`, :func:`shift_table`);
- the remedies, each scored the same way (:func:`score`): the classes a lab has
  (``reject.restrict``), Reinhard colour normalisation and one zoom per lab
  (``look.make_transform``), rejection at the threshold notebook 04 recorded, the robust
  recipe (:func:`train_robust`: ``FinetuneConfig.augment_domain``), and adapting on a few
  labelled cells (:func:`adapt_curve`: ``adapt.adapt``);
- the sentences that state these numbers (generated, never typed).

Plotting lives in :mod:`bloodlib.teach.domain_plots`; nothing here draws.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from bloodlib import CLASSES
from bloodlib.core.config import DEFAULT_SEED, robust_name
from bloodlib.core.hashing import sha256_rows
from bloodlib.core.io import read_json, write_json
from bloodlib.data import look, stain
from bloodlib.evaluate import reject

#: Cells per lab whose colour and size are measured (a random subset drawn with the seed):
#: medians over 100 cells move by about a percent, and the pass stays a few seconds.
STATS_CELLS = 100

#: Bootstrap resamples for the robust model's metrics.json entry (as notebook 04's full runs).
N_BOOT = 1000


# --- the other lab -----------------------------------------------------------------------


@dataclass
class OtherLab:
    """A lab's labelled cells: ``cells`` has relpath, path, label, sha256 (relpath order)."""

    folder: Path
    cells: pd.DataFrame
    synthetic: bool
    fingerprint: str
    ignored: dict[str, int]

    @property
    def classes_present(self) -> list[str]:
        """The lab's classes, in the model's (CLASSES) order."""
        have = set(self.cells["label"])
        return [c for c in CLASSES if c in have]

    def describe(self) -> dict[str, Any]:
        """What ``domain_shift.json`` records about the lab."""
        return {
            "path": str(self.folder),
            "synthetic": self.synthetic,
            "fingerprint": self.fingerprint,
            "n_cells": int(len(self.cells)),
            "classes_present": self.classes_present,
            "per_class": self.cells["label"].value_counts().reindex(self.classes_present).to_dict(),
            "ignored": self.ignored,
        }


def fingerprint(cells: pd.DataFrame) -> str:
    """One hash of a lab's cells: relpaths, labels and content hashes (24 hex digits)."""
    rows = cells.sort_values("relpath")[["relpath", "label", "sha256"]]
    return sha256_rows(rows.itertuples(index=False))[:24]


def load_lab(folder: str | Path, synthetic: bool = False) -> OtherLab:
    """A class-layout folder's usable cells (see ``adapt.labelled_cells``) and their fingerprint."""
    from bloodlib.train.adapt import labelled_cells

    folder = Path(folder)
    cells, ignored = labelled_cells(folder)
    return OtherLab(folder, cells, synthetic, fingerprint(cells), ignored)


def synthetic_lab(test_cells: pd.DataFrame, out_dir: str | Path) -> Path:
    """Write ``look.other_lab`` copies of ``test_cells`` (path, label) into ``out_dir``.

    ``out_dir`` belongs to the run folder (never a data folder). Deterministic, so a folder
    already made from the same cells is kept as it is; one made from other cells (another
    split) is replaced. A folder that exists without this function's marker
    (:func:`synthetic_marker`) is refused.
    """
    out_dir = Path(out_dir)
    source = sorted(zip(test_cells["path"].astype(str), test_cells["label"], strict=True))
    if not source:
        raise ValueError("no test cells to make a synthetic lab from: run notebook 01 first")
    # As JSON reads it back (tuples become lists), so an unchanged lab compares equal.
    want = json.loads(json.dumps({"cells": source, "shift": _shift_description()}))
    marker = synthetic_marker(out_dir)
    if out_dir.exists():
        if not marker.is_file():
            raise FileExistsError(
                f"{out_dir} exists but was not written by bloodlib.study.domain.synthetic_lab: move it "
                "away or give notebook 05 another run_dir"
            )
        if read_json(marker) == want:
            return out_dir
        shutil.rmtree(out_dir)  # made from another split or another shift: make it again
    look.write_other_lab(source, out_dir)
    write_json(marker, want)
    return out_dir


def synthetic_marker(out_dir: str | Path) -> Path:
    """Beside the folder (``<folder>.json``), not in it: a lab folder holds only cells."""
    out_dir = Path(out_dir)
    return out_dir.with_name(f"{out_dir.name}.json")


def _shift_description() -> dict[str, Any]:
    return {
        "tint": look.OTHER_LAB_TINT,
        "gamma": look.OTHER_LAB_GAMMA,
        "zoom": look.OTHER_LAB_ZOOM,
        "blur": look.OTHER_LAB_BLUR,
    }


# --- why it fails: colour and size ---------------------------------------------------------


def sample_cells(
    cells: pd.DataFrame, n: int = STATS_CELLS, seed: int = DEFAULT_SEED
) -> pd.DataFrame:
    """At most ``n`` rows drawn with ``seed`` (all of them when there are fewer), in path order."""
    if len(cells) <= n:
        return cells.reset_index(drop=True)
    return cells.sample(n, random_state=seed).sort_values("path").reset_index(drop=True)


def cell_statistics(paths: Sequence[str], image_size: int) -> pd.DataFrame:
    """Per cell, at the model's input size: CIELAB means and spreads, nucleus fraction.

    Columns: ``L``, ``a``, ``b`` (means), ``L_std``, ``a_std``, ``b_std``, and
    ``nucleus_fraction`` (``look.nucleus_fraction``; NaN where no nucleus was found).
    """
    from bloodlib.data.pipeline import load_images

    rows = []
    for image in load_images(list(paths), image_size):
        mean, std = stain.lab_stats(image)
        frac = look.nucleus_fraction(image)
        rows.append([*mean, *std, np.nan if frac is None else frac])
    return pd.DataFrame(
        rows, columns=["L", "a", "b", "L_std", "a_std", "b_std", "nucleus_fraction"], dtype=float
    )


def shift_table(stats: Mapping[str, pd.DataFrame]) -> pd.DataFrame:
    """Median of each statistic per lab (columns: the labs), and the nuclei found."""
    table = pd.DataFrame({lab: s.median() for lab, s in stats.items()})
    table.loc["nuclei found"] = [
        float(s["nucleus_fraction"].notna().mean()) for s in stats.values()
    ]
    return table


# --- predicting and scoring ----------------------------------------------------------------


def seed_ensemble_path(model_path: str | Path) -> Path | None:
    """The ensemble of ``model_path``'s training seeds beside it (notebook 03 writes it when
    ``n_seeds`` > 1), if there is one and ``model_path`` is among its members; else ``None``."""
    from bloodlib.core.config import ensemble_name
    from bloodlib.core.hashing import sha256_file
    from bloodlib.models.saved import read_sidecar

    model_path = Path(model_path)
    path = model_path.with_name(f"{ensemble_name(model_path.stem)}.keras")
    if not path.is_file():
        return None
    members = (read_sidecar(path).get("ensemble") or {}).get("members") or []
    return path if sha256_file(model_path) in {m.get("model_sha256") for m in members} else None


def base_model_path(run_dir: str | Path, model_name: str | None = None) -> Path:
    """The model to study: ``models/<model_name>`` (``.keras`` optional), else the fine-tuned one.

    Without a name, the run's ``models/*_finetune.keras`` (the first by name when there are
    several); a FileNotFoundError says which notebook makes it.
    """
    models = Path(run_dir) / "models"
    if model_name:
        path = Path(model_name)
        if not path.is_absolute() and path.parent == Path("."):
            path = models / path
        if path.suffix != ".keras":
            path = path.with_name(path.name + ".keras")
        if not path.is_file():
            raise FileNotFoundError(
                f"model_name = {model_name!r}: no {path}; the run's networks are: "
                f"{', '.join(sorted(p.name for p in models.glob('*.keras'))) or 'none'}"
            )
        from bloodlib.models.saved import read_sidecar, sidecar_path

        # (A missing sidecar is load_classifier's to report, with its fix.)
        if sidecar_path(path).is_file() and read_sidecar(path).get("ensemble"):
            raise ValueError(
                f"model_name = {model_name!r} is an ensemble: this notebook adapts and retrains "
                "its base network, so give one of its members; score the ensemble on the lab's "
                "cells with python -m bloodlib classify"
            )
        return path
    found = sorted(models.glob("*_finetune.keras"))
    if not found:
        raise FileNotFoundError(
            f"no fine-tuned network in {models}: run notebook 03 with the same run_dir first "
            "(or give model_name)"
        )
    return found[0]


def predict(
    clf: Any,
    paths: Sequence[str],
    *,
    normalize: str | None = None,
    zoom: float | None = None,
    stains: stain.StainVectors | None = None,
    tta: bool = False,
    batch_size: int = 32,
) -> np.ndarray:
    """The model's own probabilities (every class) for ``paths``, after the chosen transform
    (``tta``: averaged over the 8 flips and rotations, as ``classify --tta``; ``stains``:
    the lab's, for ``macenko``)."""
    transform = look.make_transform(normalize, zoom, stains=stains)
    return clf.predict_proba(
        list(paths), batch_size=batch_size, progress=False, transform=transform, tta=tta
    )


def scaled(
    proba: Any,
    labels: Sequence[str],
    classes: Sequence[str] = CLASSES,
    *,
    allowed: Sequence[str] | None = None,
    temperature: float = 1.0,
) -> tuple[np.ndarray, np.ndarray]:
    """What the rejection rule sees: restricted, temperature-scaled probabilities; label indices.

    Labels are indices into ``allowed`` (or ``classes``); a label outside them is an error.
    """
    answers = list(allowed) if allowed is not None else list(classes)
    labels = pd.Series(list(labels), dtype=object)
    outside = sorted(set(labels) - set(answers))
    if outside:
        raise ValueError(
            f"labels {outside} are not among the classes answered ({', '.join(answers)}): "
            "restrict to classes that include every label"
        )
    shown = reject.restrict(proba, list(classes), allowed, temperature)
    return shown, labels.map({c: i for i, c in enumerate(answers)}).to_numpy()


def score(
    proba: Any,
    labels: Sequence[str],
    classes: Sequence[str] = CLASSES,
    *,
    allowed: Sequence[str] | None = None,
    temperature: float = 1.0,
    threshold: float | None = None,
) -> dict[str, Any]:
    """Accuracy and balanced accuracy of ``proba`` against ``labels``, as ``classify`` answers.

    ``allowed``: predictions restricted to these classes (``reject.restrict``), else all of
    ``classes``. Balanced accuracy is the mean recall over the classes present in
    ``labels``. With ``threshold`` (on the temperature-scaled, restricted probability):
    coverage and the accuracy of the answered cells. ``predicted`` holds the class names.
    """
    answers = list(allowed) if allowed is not None else list(classes)
    shown, y = scaled(proba, labels, classes, allowed=allowed, temperature=temperature)
    pred = shown.argmax(axis=1)
    correct = pred == y
    recalls = {answers[i]: float(correct[y == i].mean()) for i in np.unique(y)}
    out = {
        "n": int(len(y)),
        "accuracy": float(correct.mean()) if len(y) else None,
        "balanced_accuracy": float(np.mean(list(recalls.values()))) if recalls else None,
        "recall": recalls,
        "classes_allowed": None if allowed is None else answers,
        "predicted": [answers[i] for i in pred],
    }
    if threshold is not None:
        out.update(reject.accepted_metrics(shown, y, threshold))
    return out


def without_predictions(scored: Mapping[str, Any]) -> dict[str, Any]:
    """:func:`score`'s result without the per-cell list, for the JSON record."""
    return {k: v for k, v in scored.items() if k != "predicted"}


def predictions_instead(labels: Sequence[str], predicted: Sequence[str]) -> pd.DataFrame:
    """Counts of true class (rows, CLASSES order) against predicted class (columns, all classes)."""
    table = pd.crosstab(
        pd.Series(list(labels), name="true class"), pd.Series(list(predicted), name="predicted")
    )
    rows = [c for c in CLASSES if c in table.index]
    return table.reindex(index=rows, columns=list(CLASSES), fill_value=0)


# --- remedies ------------------------------------------------------------------------------


def remedy_row(remedy: str, cells: str, scored: Mapping[str, Any], **extra: Any) -> dict[str, Any]:
    """One row of the comparison table from :func:`score`'s result."""
    allowed = scored.get("classes_allowed")
    return {
        "remedy": remedy,
        "cells": cells,
        "classes": "all 8" if allowed is None else f"{len(allowed)} present",
        "n": scored["n"],
        "accuracy": scored["accuracy"],
        "balanced_accuracy": scored["balanced_accuracy"],
        "coverage": scored.get("coverage", 1.0),
        **extra,
    }


def adapt_rows(
    summary: pd.DataFrame, present: Sequence[str], suffix: str = ""
) -> list[dict[str, Any]]:
    """Rows of the comparison table from :func:`adapt_summary`: one per number of shots,
    scored on the held-out cells among the classes ``present`` in the lab."""
    return [
        remedy_row(
            f"adapt, {s.shots} per class{suffix}",
            "other lab",
            {
                "n": int(round(s.n_held_out)),
                "accuracy": s.accuracy_present,
                "balanced_accuracy": s.balanced_accuracy_present,
                "classes_allowed": list(present),
            },
        )
        for s in summary.itertuples()
    ]


def coverage_curves(curves: Mapping[str, tuple[Any, Any]]) -> pd.DataFrame:
    """``reject.coverage_curve`` of each ``name -> (scaled proba, y)``, stacked (column ``cells``)."""
    parts = []
    for name, (proba, y) in curves.items():
        c = reject.coverage_curve(proba, y)
        c.insert(0, "cells", name)
        parts.append(c)
    return pd.concat(parts, ignore_index=True)


def robust_config(base_info: Mapping[str, Any], **changes: Any):
    """The base model's recipe (its sidecar's ``config``) with ``augment_domain=True``, whole frame.

    ``crop`` goes back to 1: other labs' cells fill most of their frame, and the augmentation
    zooms PBC's to match, so a centre crop would cut exactly the cells this model is for.
    Keys the sidecar holds but :class:`~bloodlib.train.finetune.FinetuneConfig` does not know
    (an older or newer bloodlib) are dropped rather than failing.
    """
    from bloodlib.train.finetune import FinetuneConfig

    cfg = dict(base_info.get("config") or {})
    if not cfg:
        raise ValueError(
            f"{base_info.get('name', 'the model')}'s sidecar records no training config: the "
            "robust recipe retrains that recipe, so fine-tune the base model with notebook 03"
        )
    return replace(
        FinetuneConfig.from_sidecar(cfg),
        augment=True,
        augment_domain=True,
        crop=1.0,
        **changes,
    )


def train_robust(
    base_info: Mapping[str, Any],
    split: pd.DataFrame,
    run_dir: str | Path,
    *,
    verbose: int = 2,
    **changes: Any,
):
    """Fine-tune ``<backbone>_robust`` on the run's split with the base recipe + other-lab augmentation.

    ``finetune.train``'s naming and resume: a finished model with the same recipe and cells
    returns at once, an interrupted one resumes.
    """
    from bloodlib.train.finetune import train

    cfg = robust_config(base_info, **changes)
    train_df = split[split["split"] == "train"]
    val_df = split[split["split"] == "val"]
    return train(cfg, train_df, val_df, run_dir, robust_name(cfg.backbone), verbose=verbose)


def upsert_metrics(run_dir: str | Path, entry: Mapping[str, Any]) -> Path:
    """Add (or replace, by name) one model's entry in ``metrics.json``, keeping everything else."""
    from bloodlib.study import scoring

    path = Path(run_dir) / "metrics.json"
    data = scoring.read_metrics(run_dir) if path.is_file() else {"models": []}
    models = [m for m in data.get("models", []) if m.get("name") != entry["name"]]
    extra = {k: v for k, v in data.items() if k != "models"}
    return scoring.write_metrics(run_dir, [*models, dict(entry)], **extra)


#: Columns of :func:`adapt_curve`'s table (also when no number of shots was given).
CURVE_COLUMNS = (
    "shots",
    "repeat",
    "seed",
    "n_support",
    "n_held_out",
    "n_unlabelled",
    "classes_not_held_out",
    "before_accuracy_present",
    "accuracy_present",
    "balanced_accuracy_present",
    "accuracy_all",
    "seconds",
)


def adapt_curve(
    model_path: str | Path,
    folder: str | Path,
    shots: Sequence[int],
    *,
    repeats: int = 1,
    seed: int = DEFAULT_SEED,
    train: str | None = None,
    batch_size: int | None = None,
    epochs: int | None = None,
    unlabelled: bool = False,
    work_dir: str | Path | None = None,
) -> pd.DataFrame:
    """``adapt.adapt`` for each number of cells per class, ``repeats`` times (seeds ``seed + r``).

    Each adapted model is scored on the cells *not* used to adapt it (``after``), beside the
    base model on the same cells (``before``); the adapted models are deleted afterwards
    (``work_dir``: where they are written meanwhile, a temporary folder by default).
    ``unlabelled``: also learn from the lab's other cells without their labels (``bloodlib
    adapt --unlabelled FOLDER`` on the labelled folder itself). The held-out cells are then
    among them: the score is transductive, as for a lab that adapts on the batch it classifies.
    Columns: :data:`CURVE_COLUMNS`.
    """
    from bloodlib.train import adapt

    if repeats < 1:
        raise ValueError(f"repeats is {repeats}: adapt at least once per number of shots")
    # None: adapt's own defaults, so the curve measures what `bloodlib adapt` does (its
    # batch size sets the number of steps on a few dozen cells, and with it the result).
    kwargs: dict[str, Any] = {} if train is None else {"train": train}
    if batch_size is not None:
        kwargs["batch_size"] = batch_size
    if epochs is not None:
        kwargs["epochs"] = epochs
    if unlabelled:
        kwargs["unlabelled"] = folder
    rows = []
    if work_dir is not None:
        Path(work_dir).mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=work_dir, prefix="adapt-") as tmp:
        for k in shots:
            for r in range(repeats):
                out = Path(tmp) / f"adapted_{k}_{r}.keras"
                res = adapt.adapt(model_path, folder, out, shots=int(k), seed=seed + r, **kwargs)
                held = set(res.held_out["label"]) if len(res.held_out) else set()
                after, before = res.after or {}, res.before or {}
                rows.append(
                    {
                        "shots": int(k),
                        "repeat": r,
                        "seed": seed + r,
                        "n_support": int(len(res.support)),
                        "n_held_out": int(len(res.held_out)),
                        "n_unlabelled": 0 if res.unlabelled is None else len(res.unlabelled),
                        "classes_not_held_out": ", ".join(
                            c for c in res.classes_present if c not in held
                        ),
                        "before_accuracy_present": before.get("accuracy_present"),
                        "accuracy_present": after.get("accuracy_present"),
                        "balanced_accuracy_present": after.get("balanced_accuracy_present"),
                        "accuracy_all": after.get("accuracy"),
                        "seconds": round(res.seconds, 1),
                    }
                )
                out.unlink(missing_ok=True)
                out.with_suffix(".json").unlink(missing_ok=True)
    return pd.DataFrame(rows, columns=CURVE_COLUMNS)


def adapt_summary(curve: pd.DataFrame) -> pd.DataFrame:
    """Mean (and min, max over repeats) held-out accuracy per number of shots."""
    g = curve.groupby("shots")
    return pd.DataFrame(
        {
            "repeats": g.size(),
            "n_held_out": g["n_held_out"].mean(),
            "n_unlabelled": g["n_unlabelled"].mean(),
            "before": g["before_accuracy_present"].mean(),
            "accuracy_present": g["accuracy_present"].mean(),
            "min": g["accuracy_present"].min(),
            "max": g["accuracy_present"].max(),
            "balanced_accuracy_present": g["balanced_accuracy_present"].mean(),
            "seconds": g["seconds"].mean(),
        }
    ).reset_index()


class Timer:
    """Wall seconds of named steps, for the record (``with timer("robust"): ...``)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self._name: str | None = None

    def __call__(self, name: str) -> Timer:
        self._name = name
        return self

    def __enter__(self) -> Timer:
        self._start = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._name is not None
        self.seconds[self._name] = round(time.perf_counter() - self._start, 1)


def save_results(run_dir: str | Path, results: Mapping[str, Any]) -> Path:
    """``run_dir/domain_shift.json``, written atomically."""
    return write_json(Path(run_dir) / "domain_shift.json", dict(results))


# --- sentences -----------------------------------------------------------------------------


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.1f} %"


def _join(items: Sequence[str]) -> str:
    items = list(items)
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def lab_sentence(lab: OtherLab, n_source: int | None = None) -> str:
    """Where the other lab's cells come from, saying plainly when they are synthetic."""
    per = lab.cells["label"].value_counts().reindex(lab.classes_present)
    counts = _join([f"{c} {int(n)}" for c, n in per.items()])
    if lab.synthetic:
        return (
            f"**The other lab here is synthetic.** No other lab's cells were given "
            f"(`other_lab = None`), so its {len(lab.cells)} cells are the run's PBC test cells "
            f"shifted by `look.other_lab` (a yellow tint, a flatter camera curve, a "
            f"{look.OTHER_LAB_ZOOM:g}x zoom and a slight blur), written to `{lab.folder.name}/` "
            f"in the run folder ({counts}). Every number below measures this made-up shift, "
            "not a real lab: pass `other_lab` (e.g. `../shared/data/external-dev/tecom`) to "
            "measure real cells."
        )
    return (
        f"The other lab's cells: {len(lab.cells)} real cells from `{lab.folder}` ({counts}; "
        f"fingerprint `{lab.fingerprint}`)."
    )


def zero_shot_sentence(
    all_classes: Mapping[str, Any], present: Mapping[str, Any], pbc: float
) -> str:
    """The PBC model's fall on the other lab, all classes and among those present."""
    instead = pd.Series(all_classes["predicted"])
    absent = set(CLASSES) - set(present["classes_allowed"] or CLASSES)
    wrong_absent = int(instead.isin(absent).sum())
    text = (
        f"On its own PBC test cells the model is right {_pct(pbc)} of the time; on the other "
        f"lab's {all_classes['n']} cells, {_pct(all_classes['accuracy'])} (balanced "
        f"{_pct(all_classes['balanced_accuracy'])})."
    )
    if not absent:
        text += " The lab has all eight classes, so allowing only its classes changes nothing."
    else:
        text += (
            f" Allowed to answer only the {len(present['classes_allowed'])} classes the lab has: "
            f"{_pct(present['accuracy'])} (balanced {_pct(present['balanced_accuracy'])})."
        )
        text += (
            f" {wrong_absent} of the {all_classes['n']} cells were called a class this lab does "
            f"not have ({_join(sorted(absent))})."
        )
    return text


def shift_sentence(table: pd.DataFrame, pbc: str, other: str) -> str:
    """How the two labs' colour and nucleus size differ, from :func:`shift_table`."""
    t = table
    ratio = t.loc["nucleus_fraction", other] / t.loc["nucleus_fraction", pbc]
    hue = np.hypot(t.loc["a", other] - t.loc["a", pbc], t.loc["b", other] - t.loc["b", pbc])
    size = (
        f"its nuclei span {ratio:.2f} times PBC's share of the frame"
        if abs(ratio - 1) >= 0.05
        else "its nuclei fill about the same share of the frame as PBC's"
    )
    return (
        f"Median over the cells measured: the other lab's lightness L* is "
        f"{t.loc['L', other]:.1f} against PBC's {t.loc['L', pbc]:.1f}, its b* (blue to yellow) "
        f"{t.loc['b', other]:.1f} against {t.loc['b', pbc]:.1f}, a colour distance of "
        f"{hue:.1f} in the a*b* plane; {size} ({t.loc['nucleus_fraction', other]:.3f} against "
        f"{t.loc['nucleus_fraction', pbc]:.3f} of the side)."
    )


def remedies_sentence(table: pd.DataFrame, cells: str = "other lab") -> str:
    """The best and worst remedy on ``cells`` (answering every cell), against zero-shot."""
    rows = table[(table["cells"] == cells) & (table["coverage"] >= 1.0)]
    if rows.empty:
        return f"No remedy was measured on the {cells}'s cells."
    best = rows.loc[rows["accuracy"].idxmax()]
    # Against the untouched model answering the same classes (all 8 when it was not scored so).
    untouched = rows[rows["remedy"] == "none"]
    base = untouched[untouched["classes"] == best["classes"]]
    if base.empty:
        base = untouched[untouched["classes"] == "all 8"]
    text = (
        f"On the {cells}'s cells the best remedy answering every cell is **{best['remedy']}** "
        f"({best['classes']} classes): {_pct(best['accuracy'])} (balanced "
        f"{_pct(best['balanced_accuracy'])}, n = {int(best['n'])})"
    )
    if len(base):
        b = base.iloc[0]
        gain = 100 * (best["accuracy"] - b["accuracy"])
        text += (
            f", {gain:+.1f} points over the untouched model ({_pct(b['accuracy'])}, "
            f"{b['classes']} classes)"
        )
    text += "."
    if cells == "other lab" and (rows["n"] < 100).any():
        text += " With fewer than 100 cells one cell moves accuracy by more than a point."
    return text


def robust_sentence(
    pbc_base: float, pbc_robust: float, other_base: float, other_robust: float, synthetic: bool
) -> str:
    """What the robust recipe cost on PBC and bought on the other lab (classes present)."""
    d_pbc = 100 * (pbc_robust - pbc_base)
    d_other = 100 * (other_robust - other_base)
    text = (
        f"The robust model scores {_pct(pbc_robust)} on the PBC test cells ({d_pbc:+.1f} points "
        f"against the base model's {_pct(pbc_base)}) and {_pct(other_robust)} on the other lab "
        f"among the classes present ({d_other:+.1f} points against {_pct(other_base)})."
    )
    if synthetic:
        text += (
            " On a synthetic lab this flatters it: the other-lab augmentation (zoom, blur, tint, "
            "gamma) covers the synthetic shift by construction, so only real cells of another lab "
            "can judge the recipe."
        )
    return text


def adapt_sentence(summary: pd.DataFrame, zero_shot_present: float, repeats: int) -> str:
    """How held-out accuracy grows with the labelled cells per class."""
    if summary.empty:
        return "No adaptation was run."
    first, last = summary.iloc[0], summary.iloc[-1]
    text = (
        f"With {int(first['shots'])} labelled cell(s) per class, the adapted model is right on "
        f"{_pct(first['accuracy_present'])} of the held-out cells; with {int(last['shots'])}, "
        f"{_pct(last['accuracy_present'])} (the base model: {_pct(zero_shot_present)} on all of "
        f"the lab's cells, among the classes present)."
    )
    if repeats == 1:
        text += (
            " One draw of support cells per point: another draw moves each point, the more so "
            "the fewer held-out cells are left (raise `adapt_repeats` to see by how much)."
        )
    else:
        text += f" Each point is the mean of {repeats} draws; the band spans their range."
    return text


def unlabelled_sentence(with_unlabelled: pd.DataFrame, without: pd.DataFrame) -> str:
    """Adapting with the lab's unlabelled cells beside the same numbers of shots without."""
    if with_unlabelled.empty:
        return "Adapting with unlabelled cells was not run (`unlabelled_shots` is empty)."
    plain = without.set_index("shots")["accuracy_present"]
    parts = []
    for s in with_unlabelled.itertuples():
        also = f" (without them: {_pct(plain[s.shots])})" if s.shots in plain.index else ""
        parts.append(f"{_pct(s.accuracy_present)} with {int(s.shots)} per class{also}")
    n = int(with_unlabelled["n_unlabelled"].max())
    return (
        f"Adding the lab's other cells without their labels ({n} unlabelled cells, "
        f"`adapt --unlabelled`): {'; '.join(parts)}. The scored cells were "
        "among the unlabelled ones, so the score is transductive: what a lab gets when it "
        "adapts on the very batch it then classifies."
    )


def entropy_sentence(entropy: Mapping[str, np.ndarray], n_classes: int) -> str:
    """Mean entropy of the predictions per set of cells, beside its ceiling ln(n_classes)."""
    means = ", ".join(f"{name} {float(np.mean(e)):.2f}" for name, e in entropy.items())
    return (
        f"Mean entropy of the base model's predictions among the {n_classes} classes present "
        f"(nats): {means}; at most ln {n_classes} = {np.log(n_classes):.2f}, when every class "
        "is equally likely."
    )
