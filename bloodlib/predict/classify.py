"""Classify a folder of cell images with a saved model.

Every file gets a row: a prediction with its probability and top 3, or the
reason it was skipped. On a folder in the class layout (one sub-folder per
class) the folder names are taken as labels and the run also reports
accuracy, balanced accuracy and per-class metrics.

For another lab's cells (see ``bloodlib.evaluate.reject`` and ``bloodlib.data.stain``): predictions
can be restricted to the classes the lab has (``classes``), cells whose probability
falls below a threshold are marked ``uncertain`` (``reject_below``, or the sidecar's
``reject_threshold``), and images can be moved towards PBC's colours and scale first
(``normalize="reinhard"``, ``rescale_cell=True``; ``"reinhard+macenko"`` predicts once
after each and multiplies the answers).
"""

from __future__ import annotations

import os
import time
import warnings
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from bloodlib.core.errors import OutputPathError
from bloodlib.core.io import write_with
from bloodlib.core.paths import check_output
from bloodlib.data import split, stain
from bloodlib.data.files import CLASSIFIABLE, class_of, inspect_file, list_files
from bloodlib.data.look import (
    LOOK_SIZE,
    ZOOM_SAMPLE,
    FolderLook,
    folder_look,
    lab_zoom,
    make_transform,
)
from bloodlib.data.pipeline import load_images
from bloodlib.evaluate import reject
from bloodlib.evaluate.calibration import log_average
from bloodlib.evaluate.metrics import evaluate, per_class_table
from bloodlib.models import pretrained
from bloodlib.models.saved import sidecar_path
from bloodlib.predict.engine import Classifier, load_classifier


@dataclass
class ClassifyResult:
    table: pd.DataFrame  # one row per file
    skipped: pd.DataFrame  # files that could not be classified, with the reason
    differential: pd.DataFrame  # count and percent per predicted class
    metrics: dict | None  # against folder labels, when the folder is in the class layout
    out_csv: Path | None
    seconds: float
    engine: str | None = None  # what predicted: "tflite", "keras" or "svm"
    tta: bool = False
    #: Classified images not scored against folder labels, per folder (``.`` = top level),
    #: when other folders did name the model's classes.
    unscored: dict[str, int] = field(default_factory=dict)
    #: The classes predictions were restricted to (None: all the model's classes).
    classes_allowed: list[str] | None = None
    #: Threshold below which a cell is ``uncertain`` (None: every cell is answered).
    reject_threshold: float | None = None
    temperature: float = 1.0
    normalize: str = "none"
    #: The lab-wide zoom of --rescale-cell, per colour normalisation it was measured after.
    zoom: dict[str, float] | None = None
    lab_stains: stain.StainVectors | None = None  # the lab's dyes, with --normalize macenko
    look: FolderLook | None = None  # how far the folder's cells are from PBC's look
    adapted: bool = False  # the model was adapted to another lab (``adapt``): no PBC warning
    n_uncertain: int = 0
    #: Labelled cells left out of the metrics because --classes excludes their class.
    excluded: dict[str, int] = field(default_factory=dict)

    #: Classified cells the model was trained or validated on (its sidecar's ``trained_on``);
    #: marked ``seen_in_training`` in the CSV and left out of the metrics. None: not recorded.
    n_seen: int | None = None

    def report(self) -> str:
        """What a user reads after ``classify``: speed, output, warnings, counts, metrics."""
        n = len(self.table) - len(self.skipped)
        lines = [
            f"classified {n} images in {self.seconds:.1f} s ({n / max(self.seconds, 1e-9):.1f} images/s"
            + (f", {self.engine}" if self.engine else "")
            + (", test-time augmentation x8" if self.tta else "")
            + ")"
        ]
        if self.out_csv:
            lines.append(f"predictions written to {self.out_csv}")
        if self.classes_allowed is not None:
            lines.append(f"predictions restricted to: {', '.join(self.classes_allowed)}")
        lines += self._look_lines() + self._normalised_lines()
        if self.reject_threshold is not None:
            lines.append(
                f"uncertain (probability below {self.reject_threshold:.3f}"
                + (f", temperature {self.temperature:.3g}" if self.temperature != 1.0 else "")
                + f"): {self.n_uncertain} cell(s), marked 'uncertain' in the CSV"
            )
        if self.n_seen:
            lines.append(
                f"{self.n_seen} of these cells were among the model's own training or validation "
                "cells: marked seen_in_training in the CSV and left out of every score below"
            )
        if len(self.skipped):
            lines.append(f"skipped {len(self.skipped)} file(s):")
            lines += [f"  {r.relpath}: {r.reason}" for r in self.skipped.itertuples()]
        lines.append("differential count:")
        lines += [
            f"  {r.Index:<13} {r.count:>6}  {r.percent:5.1f}%"
            for r in self.differential.itertuples()
        ]
        return "\n".join(lines + self._metrics_lines())

    def _look_lines(self) -> list[str]:
        if self.look is None:
            return []
        if not self.look.unlike_pbc or self.adapted:
            adapted = " (the model was adapted to another lab's cells)" if self.adapted else ""
            return [f"look: {self.look.describe()}{adapted}"]
        fix = (
            "adapt the model with 5 labelled cells per class (python -m bloodlib adapt)"
            if self.normalize != "none" or self.zoom is not None
            else "try --normalize reinhard+macenko --rescale-cell, and adapt the model "
            "with 5 labelled cells per class (python -m bloodlib adapt)"
        )
        return [
            f"WARNING: these cells do not look like PBC's: {self.look.describe()}. A "
            "model trained on PBC, as bloodlib's runs are, is much less accurate on such "
            f"cells than on PBC's test split: {fix}; see docs/other-labs.md"
        ]

    def _normalised_lines(self) -> list[str]:
        if self.normalize == "none" and self.zoom is None:
            return []
        notes = []
        if self.lab_stains is not None:
            notes.append("stains estimated from the folder's cells")
        if len(stain.normalize_views(self.normalize)) > 1:
            notes.append("one prediction after each, multiplied")
        parts = [f"colours: {self.normalize}"] if self.normalize != "none" else []
        if notes:
            parts[-1] += f" ({'; '.join(notes)})"
        if self.zoom is not None:
            zooms = [f"x{z:.2f}" + (f" after {v}" if len(self.zoom) > 1 else "")
                     for v, z in self.zoom.items()]  # fmt: skip
            parts.append(f"zoom {', '.join(zooms)} (cells to PBC's size)")
        return ["normalised before the model: " + ", ".join(parts)]

    def _metrics_lines(self) -> list[str]:
        lines = []
        if self.metrics:
            m = self.metrics
            lines.append(
                f"against folder labels: accuracy {m['accuracy']:.4f}, "
                f"balanced accuracy {m['balanced_accuracy']:.4f} (n={m['n']}"
                + (", among the allowed classes" if self.classes_allowed is not None else "")
                + (", cells the model never trained on" if self.n_seen else "")
                + ")"
            )
            if m.get("reject_threshold") is not None:
                acc = m["accepted_accuracy"]
                lines.append(
                    f"accepted cells: coverage {m['coverage']:.4f} ({m['n_accepted']} of "
                    f"{m['n']}), accuracy {'n/a' if acc is None else f'{acc:.4f}'}"
                )
            lines.append(per_class_table(m).round(4).to_string())
        if self.unscored:
            lines.append(
                f"NOT scored against folder labels: {sum(self.unscored.values())} image(s) in "
                "folders that name none of the model's classes: "
                + ", ".join(f"{k} ({v})" for k, v in self.unscored.items())
            )
        if self.excluded:
            lines.append(
                f"NOT scored: {sum(self.excluded.values())} labelled image(s) of classes "
                "outside --classes: " + ", ".join(f"{k} ({v})" for k, v in self.excluded.items())
            )
        return lines


def _list(folder: Path) -> list[str]:
    """Every entry to report under ``folder``, as the manifest lists them (FIFOs, links too)."""
    return [rel for rel, _, _ in list_files(folder)]


def check_output_path(out_csv: str | Path, folder: str | Path, model_path: str | Path) -> Path:
    """Refuse an output that would overwrite an input; create its folder. Call before any work.

    The shared rules (``core.paths.check_output``: not inside the classified folder, whose
    next run would read it; not the model or its sidecar), then the CSV's own: anything
    existing that is not a regular ``.csv`` file is refused (an old CSV of predictions is
    replaced). Raises :class:`OutputPathError`.
    """
    out = check_output(
        out_csv,
        inputs=[model_path, sidecar_path(model_path)],
        role="model",
        folders={"folder being classified": folder},
        what="a CSV of predictions",
    )
    target = out.resolve()  # symlinks followed: a link onto an input is that input
    if target.exists() and (not target.is_file() or target.suffix.lower() != ".csv"):
        raise OutputPathError(
            f"--out {out} exists and is not a .csv file; refusing to overwrite it "
            "(give a new name, or a .csv file to replace)"
        )
    return out


def classify_folder(
    model_path: str | Path,
    folder: str | Path,
    out_csv: str | Path | None = None,
    *,
    batch_size: int = 32,
    progress: bool = True,
    workers: int | None = None,
    engine: str = "auto",
    tta: bool = False,
    trust_pickle: bool = False,
    classes: str | Sequence[str] | None = None,
    reject_below: float | None = None,
    normalize: str | None = None,
    rescale_cell: bool = False,
) -> ClassifyResult:
    """Predict every image under ``folder``; unreadable files are reported, never fatal.

    The output path, the model and its sidecar are checked before any file is read
    (``trust_pickle`` allows an old pickled SVM, which can run code). For fine-tuned networks:
    ``engine`` (``auto``, ``keras``, ``tflite``), ``tta`` (the 8 flips and rotations averaged),
    ``normalize`` and ``rescale_cell`` (colours and cell size moved towards PBC's first:
    :class:`LabMoves`). ``classes`` restricts the answer to some classes (the CSV's
    ``p_<class>`` keep every class); ``reject_below`` marks cells below that probability
    ``uncertain`` (None: the sidecar's threshold; 0: off). On a class layout the folder
    labels are scored, leaving out the cells the model learnt from (``seen_in_training``).
    """
    start, folder, model_path = time.perf_counter(), Path(folder), pretrained.resolve(model_path)
    out_csv = _check_request(model_path, folder, out_csv, batch_size, workers, reject_below)
    normalize = stain.check_normalize(normalize)
    clf = _open(model_path, trust_pickle, tta or normalize != "none" or rescale_cell)
    allowed = None if classes is None else reject.parse_classes(classes, clf.classes)
    temperature, threshold = _rejection(clf, reject_below)
    clf.prepare(engine, batch_size)  # a model that does not match its sidecar fails here
    files = _inspect(folder, workers)
    ok = files["status"].isin(CLASSIFIABLE)
    good = files[ok].reset_index(drop=True)
    table = _new_table(files, ok)
    look = _look(good)
    moves = _lab_moves(good, normalize, rescale_cell, clf.image_size, folder)
    answers = allowed or clf.classes  # the classes a prediction may name, in model order
    shown = np.zeros((0, len(answers)))
    n_uncertain = 0
    if len(good):
        proba = _predict(
            clf, good, moves, batch_size=batch_size, progress=progress, engine=engine, tta=tta
        )
        shown = reject.restrict(proba, clf.classes, allowed, temperature)
        n_uncertain = _fill_predictions(table, ok, proba, shown, clf.classes, answers, threshold)
    seen = _seen_in_training(clf, table, good, ok)
    fresh = None if seen is None else ~seen
    scores = _score_labels(table, good, ok, shown, clf.classes, answers, threshold, fresh=fresh)
    metrics, unscored, excluded = scores
    if metrics is not None:
        metrics.update(temperature=temperature, classes_allowed=allowed)
    out = None
    if out_csv:
        out = write_with(Path(out_csv), lambda p: table.to_csv(p, index=False), suffix=".csv")
    return ClassifyResult(
        table,
        files[~ok][["relpath", "status", "reason"]].reset_index(drop=True),
        _differential(table, answers, n_uncertain),
        metrics,
        out,
        time.perf_counter() - start,
        clf.engine,
        tta,
        unscored,
        classes_allowed=allowed,
        reject_threshold=threshold,
        temperature=temperature,
        normalize=normalize,
        zoom=moves.zoom,
        lab_stains=moves.stains,
        look=look,
        adapted="adapt" in clf.info,
        n_uncertain=n_uncertain,
        excluded=excluded,
        n_seen=None if seen is None else int(seen.sum()),
    )


def _check_request(
    model_path: str | Path,
    folder: Path,
    out_csv: str | Path | None,
    batch_size: int,
    workers: int | None,
    reject_below: float | None,
) -> Path | None:
    """Every argument checked before the model is read: the folder, the numbers, the output."""
    if not folder.is_dir():
        raise FileNotFoundError(f"not a folder: {folder}")
    if batch_size < 1 or (workers is not None and workers < 1):
        raise ValueError(f"batch_size ({batch_size}) and workers ({workers}) must be at least 1")
    if reject_below is not None and not 0.0 <= reject_below <= 1.0:
        raise ValueError(f"reject_below is {reject_below}: give a probability in 0..1")
    return check_output_path(out_csv, folder, model_path) if out_csv else None


def _rejection(clf: Classifier, reject_below: float | None) -> tuple[float, float | None]:
    """The temperature and the threshold below which a cell is left ``uncertain``: the
    sidecar's unless ``reject_below`` is given; None (0 given): every cell answered."""
    threshold = clf.info.get("reject_threshold") if reject_below is None else reject_below
    return float(clf.info.get("temperature") or 1.0), (float(threshold) if threshold else None)


def _new_table(files: pd.DataFrame, ok: pd.Series) -> pd.DataFrame:
    """The CSV's rows before predicting: every file, classified or skipped with its reason."""
    table = files[["relpath"]].copy()
    table["status"] = np.where(ok, "classified", "skipped")
    table["reason"] = np.where(ok, "", files["reason"])
    for col in ("predicted", "probability", "top3"):
        table[col] = None
    return table


def _open(model_path: str | Path, trust_pickle: bool, network_only: bool) -> Classifier:
    """The model, checked; an SVM is refused for what only fine-tuned networks do."""
    clf = load_classifier(model_path, trust_pickle=trust_pickle)
    if network_only and clf.info["method"] == "svm":
        raise ValueError(
            f"{Path(model_path).name} is an SVM: test-time augmentation and colour/scale "
            "normalisation apply to fine-tuned networks"
        )
    return clf


def _inspect(folder: Path, workers: int | None) -> pd.DataFrame:
    """One row per entry under ``folder`` (``files.inspect_file``), in parallel threads.

    Hidden files (macOS ``._`` copies, thumbnails) get the status "hidden" even when they decode.
    """
    relpaths = _list(folder)
    with ThreadPoolExecutor(workers or min(8, (os.cpu_count() or 1) * 2)) as pool:
        rows = list(pool.map(lambda r: inspect_file(folder, r), relpaths))
    files = pd.DataFrame(rows)
    if files.empty:
        files = pd.DataFrame(columns=["relpath", "path", "label", "status", "reason", "sha256"])
    return files


def _look(good: pd.DataFrame) -> FolderLook | None:
    """Does the folder look like PBC? A lab pointing a PBC model at its own cells should hear
    it before trusting the answers. Advisory only: never the reason a classification fails."""
    if not len(good):
        return None
    try:
        return folder_look(lab_sample(good["path"].tolist(), LOOK_SIZE))
    except Exception as exc:  # noqa: BLE001
        warnings.warn(f"could not measure the cells' look: {exc}", stacklevel=3)
        return None


@dataclass
class LabMoves:
    """What is done to a folder's cells before the model: the colour moves (one prediction
    after each, multiplied), the lab's stains (``macenko``), one zoom per colour move."""

    views: tuple[str, ...]
    zoom: dict[str, float] | None = None
    stains: stain.StainVectors | None = None

    def transforms(self) -> list:
        """One batch transform per view (``look.make_transform``; None: the cells as decoded)."""
        zoom = self.zoom or {}
        return [make_transform(v, zoom.get(v), stains=self.stains) for v in self.views]


def _lab_moves(
    good: pd.DataFrame, normalize: str, rescale_cell: bool, image_size: int, folder: Path
) -> LabMoves:
    """The lab-wide parts of the normalisation, measured once on the folder's cells: the
    lab's stains (``macenko``) and one zoom per colour move (``--rescale-cell``)."""
    moves = LabMoves(stain.normalize_views(normalize))
    if (rescale_cell or "macenko" in moves.views) and len(good):
        sample = lab_sample(good["path"].tolist(), image_size)
        if "macenko" in moves.views:
            moves.stains = stain.macenko_stains(sample, source=str(folder))
        if rescale_cell:  # measured after each colour move, as the network will see the cells
            moves.zoom = {v: lab_zoom(sample, v, stains=moves.stains) for v in moves.views}
    return moves


def _predict(clf: Classifier, good: pd.DataFrame, moves: LabMoves, **options: Any) -> np.ndarray:
    """The model's probabilities for every usable cell, after each view, multiplied."""
    probas = clf.predict_proba_views(
        good["path"].tolist(), moves.transforms(), hashes=good["sha256"].tolist(), **options
    )
    return probas[0] if len(probas) == 1 else log_average(probas)


def _fill_predictions(
    table: pd.DataFrame,
    ok: pd.Series,
    proba: np.ndarray,
    shown: np.ndarray,
    classes: Sequence[str],
    answers: Sequence[str],
    threshold: float | None,
) -> int:
    """The CSV's prediction columns for the classified rows; returns the cells left uncertain."""
    order = np.argsort(-shown, axis=1)
    idx = np.flatnonzero(ok.to_numpy())
    conf = reject.confidence(shown)
    table.loc[idx, "predicted"] = [answers[i] for i in order[:, 0]]
    table.loc[idx, "probability"] = np.round(conf, 6)
    table.loc[idx, "top3"] = [
        "; ".join(f"{answers[j]}:{shown[i, j]:.3f}" for j in order[i, :3]) for i in range(len(idx))
    ]
    n_uncertain = 0
    if threshold is not None:
        low = conf < threshold
        n_uncertain = int(low.sum())
        table.loc[idx[low], "status"] = "uncertain"
        table.loc[idx[low], "reason"] = [
            f"probability {c:.3f} below the threshold {threshold:.3f}" for c in conf[low]
        ]
    for j, c in enumerate(classes):  # the model's own probabilities, every class
        table.loc[idx, f"p_{c}"] = np.round(proba[:, j], 6)
    return n_uncertain


def _seen_in_training(
    clf: Classifier, table: pd.DataFrame, good: pd.DataFrame, ok: pd.Series
) -> np.ndarray | None:
    """Which classified cells the model learnt from (its sidecar's ``trained_on``), marked in
    the CSV's ``seen_in_training``; None when the model records none."""
    seen = split.seen_mask(clf.info.get("trained_on"), good["sha256"])
    if seen is None:
        return None
    table["seen_in_training"] = None
    table.loc[np.flatnonzero(ok.to_numpy()), "seen_in_training"] = seen
    return seen


def _differential(table: pd.DataFrame, answers: Sequence[str], n_uncertain: int) -> pd.DataFrame:
    """Counts per class; uncertain cells are counted apart, never in the class they were
    nearly given."""
    answered = table["predicted"].where(table["status"] == "classified")
    counts = answered.value_counts().reindex(answers, fill_value=0)
    if n_uncertain:
        counts["uncertain"] = n_uncertain
    return pd.DataFrame({"count": counts, "percent": 100 * counts / max(1, int(counts.sum()))})


def _score_labels(
    table: pd.DataFrame,
    good: pd.DataFrame,
    ok: pd.Series,
    shown: np.ndarray,
    classes: Sequence[str],
    answers: Sequence[str],
    threshold: float | None,
    fresh: np.ndarray | None = None,
) -> tuple[dict[str, Any] | None, dict[str, int], dict[str, int]]:
    """On a class layout (the top folder names the label, ``files.class_of``): metrics among
    ``answers`` (with the answered cells' at ``threshold``), the folders that name no class,
    and the labelled images outside ``answers``. ``fresh``: the cells that may be scored
    (not the model's own training cells)."""
    metrics, unscored, excluded = None, {}, {}
    parts = good["relpath"].str.split("/")
    folders = parts.str[0].where(parts.str.len() > 1, ".")
    labels = folders.map(lambda f: class_of(f, classes))
    labelled = labels.notna().to_numpy()
    scored = labelled & labels.isin(answers).to_numpy()
    if fresh is not None:
        scored &= fresh
    if labelled.any():
        idx = np.flatnonzero(ok.to_numpy())
        table.loc[idx[labelled], "label"] = labels[labelled].to_numpy()
        unscored = folders[~labelled].value_counts().sort_index().to_dict()
        # only the classes outside ``answers``: the model's own cells are counted as n_seen
        outside = labelled & ~labels.isin(answers).to_numpy()
        excluded = labels[outside].value_counts().sort_index().to_dict()
    if scored.any():
        y = labels[scored].map({c: i for i, c in enumerate(answers)}).to_numpy()
        metrics = evaluate(y, shown[scored], list(answers), n_boot=200)
        metrics.update(reject.accepted_metrics(shown[scored], y, threshold))
    return metrics, unscored, excluded


def lab_sample(paths: list[str], image_size: int) -> list[np.ndarray]:
    """The cells a folder's lab-wide normalisation is measured on: up to
    ``ZOOM_SAMPLE`` of them, evenly spread over the sorted paths (so every class of a
    class layout contributes), decoded as the model sees them."""

    pick = np.unique(np.linspace(0, len(paths) - 1, min(ZOOM_SAMPLE, len(paths))).round())
    return list(load_images([paths[int(i)] for i in pick], image_size))
