"""Classify a folder of cell images with a saved model.

Every file gets a row: a prediction with its probability and top 3, or the
reason it was skipped. On a folder in the class layout (one sub-folder per
class) the folder names are taken as labels and the run also reports
accuracy, balanced accuracy and per-class metrics.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from bloodlib import manifest
from bloodlib.errors import OutputPathError
from bloodlib.io import write_with
from bloodlib.saved import load_classifier, sidecar_path

#: Manifest statuses that still decode to an RGB image the model can read.
CLASSIFIABLE = {"ok", "unknown_class", "odd_size"}


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

    def report(self) -> str:
        n = len(self.table) - len(self.skipped)
        lines = [
            f"classified {n} images in {self.seconds:.1f} s ({n / max(self.seconds, 1e-9):.1f} images/s"
            + (f", {self.engine}" if self.engine else "")
            + (", test-time augmentation x8" if self.tta else "")
            + ")"
        ]
        if self.out_csv:
            lines.append(f"predictions written to {self.out_csv}")
        if len(self.skipped):
            lines.append(f"skipped {len(self.skipped)} file(s):")
            lines += [f"  {r.relpath}: {r.reason}" for r in self.skipped.itertuples()]
        lines.append("differential count:")
        lines += [
            f"  {r.Index:<13} {r.count:>6}  {r.percent:5.1f}%"
            for r in self.differential.itertuples()
        ]
        if self.metrics:
            m = self.metrics
            lines.append(
                f"against folder labels: accuracy {m['accuracy']:.4f}, "
                f"balanced accuracy {m['balanced_accuracy']:.4f} (n={m['n']})"
            )
            from bloodlib.evaluate import per_class_table

            lines.append(per_class_table(m).round(4).to_string())
        if self.unscored:
            lines.append(
                f"NOT scored against folder labels: {sum(self.unscored.values())} image(s) in "
                "folders that name none of the model's classes: "
                + ", ".join(f"{k} ({v})" for k, v in self.unscored.items())
            )
        return "\n".join(lines)


def _list(folder: Path) -> list[str]:
    """Every entry to report under ``folder``, as the manifest lists them (FIFOs, links too)."""
    return [rel for rel, _, _ in manifest.list_files(folder)]


def check_output_path(out_csv: str | Path, folder: str | Path, model_path: str | Path) -> Path:
    """Refuse an output that would overwrite an input; create its folder. Call before any work.

    Refused: a path inside the classified folder (an input image, or a CSV the next run
    would classify), the model file or its sidecar, anything existing that is not a
    regular ``.csv`` file. Raises :class:`OutputPathError`.
    """
    out = Path(out_csv)
    target = out.resolve()  # symlinks followed: a link onto an input is that input
    root = Path(folder).resolve()
    if target == root or root in target.parents:
        raise OutputPathError(
            f"--out {out} is inside the folder being classified ({folder}): it could replace an "
            "input image and would be classified next time; write the CSV outside that folder"
        )
    model = Path(model_path)
    if target in {model.resolve(), sidecar_path(model).resolve(), sidecar_path(model.resolve())}:
        raise OutputPathError(
            f"--out {out} is the model {model.name} or its sidecar; write the CSV elsewhere"
        )
    if target.exists():
        if not target.is_file() or target.suffix.lower() != ".csv":
            raise OutputPathError(
                f"--out {out} exists and is not a .csv file; refusing to overwrite it "
                "(give a new name, or a .csv file to replace)"
            )
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputPathError(
            f"cannot create the folder for --out {out}: {exc.strerror or exc}"
        ) from exc
    if not os.access(target.parent, os.W_OK | os.X_OK):
        raise OutputPathError(f"cannot write --out {out}: its folder is not writable")
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
) -> ClassifyResult:
    """Predict every image under ``folder``; unreadable files are reported, never fatal.

    ``engine`` (``auto``, ``keras``, ``tflite``) and ``tta`` (average over the 8 flips
    and rotations) apply to fine-tuned networks: see ``bloodlib.inference``. The output
    path, the model and its sidecar are all checked before any file is read;
    ``trust_pickle`` allows an old pickled SVM, which can run code (see ``bloodlib.saved``).
    """
    import time

    start = time.perf_counter()
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"not a folder: {folder}")
    if batch_size < 1 or (workers is not None and workers < 1):
        raise ValueError(f"batch_size ({batch_size}) and workers ({workers}) must be at least 1")
    if out_csv:
        out_csv = check_output_path(out_csv, folder, model_path)
    clf = load_classifier(model_path, trust_pickle=trust_pickle)
    if tta and clf.info["method"] == "svm":
        raise ValueError(
            f"{Path(model_path).name} is an SVM: test-time augmentation applies to fine-tuned networks"
        )
    clf.prepare(engine, batch_size)  # a model that does not match its sidecar fails here
    relpaths = _list(folder)
    with ThreadPoolExecutor(workers or min(8, (os.cpu_count() or 1) * 2)) as pool:
        rows = list(pool.map(lambda r: manifest.inspect_file(folder, r), relpaths))
    files = pd.DataFrame(rows)
    if files.empty:
        files = pd.DataFrame(columns=["relpath", "path", "label", "status", "reason", "sha256"])
    ok = files["status"].isin(CLASSIFIABLE)
    # Hidden files are defects even when they happen to decode (macOS ._ copies).
    ok &= ~files["relpath"].str.split("/").apply(lambda ps: any(p.startswith(".") for p in ps))
    good = files[ok].reset_index(drop=True)
    skipped = files[~ok][["relpath", "status", "reason"]].reset_index(drop=True)

    classes = clf.classes
    table = files[["relpath"]].copy()
    table["status"] = np.where(ok, "classified", "skipped")
    table["reason"] = np.where(ok, "", files["reason"])
    for col in ("predicted", "probability", "top3"):
        table[col] = None
    if len(good):
        proba = clf.predict_proba(
            good["path"].tolist(),
            hashes=good["sha256"].tolist(),
            batch_size=batch_size,
            progress=progress,
            engine=engine,
            tta=tta,
        )
        order = np.argsort(-proba, axis=1)
        pred = [classes[i] for i in order[:, 0]]
        top3 = [
            "; ".join(f"{classes[j]}:{proba[i, j]:.3f}" for j in order[i, :3])
            for i in range(len(good))
        ]
        idx = np.flatnonzero(ok.to_numpy())
        table.loc[idx, "predicted"] = pred
        table.loc[idx, "probability"] = np.round(proba.max(axis=1), 6)
        table.loc[idx, "top3"] = top3
        for j, c in enumerate(classes):
            table.loc[idx, f"p_{c}"] = np.round(proba[:, j], 6)
    counts = table["predicted"].value_counts().reindex(classes, fill_value=0)
    differential = pd.DataFrame(
        {"count": counts, "percent": 100 * counts / max(1, int(counts.sum()))}
    )

    metrics, unscored = None, {}
    # Class layout: the top folder names the label, matched to the model's classes without
    # regard to case (``Basophil/`` is basophil), as the manifest does.
    parts = good["relpath"].str.split("/")
    folders = parts.str[0].where(parts.str.len() > 1, ".")
    labels = folders.str.lower().map({c.lower(): c for c in classes})
    scored = labels.notna().to_numpy()
    if scored.any():
        from bloodlib.evaluate import evaluate

        idx = np.flatnonzero(ok.to_numpy())
        table.loc[idx[scored], "label"] = labels[scored].to_numpy()
        y = labels[scored].map({c: i for i, c in enumerate(classes)}).to_numpy()
        metrics = evaluate(y, proba[scored], classes, n_boot=200)
        unscored = folders[~scored].value_counts().sort_index().to_dict()

    out = None
    if out_csv:
        out = write_with(Path(out_csv), lambda p: table.to_csv(p, index=False), suffix=".csv")
    return ClassifyResult(
        table,
        skipped,
        differential,
        metrics,
        out,
        time.perf_counter() - start,
        clf.engine,
        tta,
        unscored,
    )
