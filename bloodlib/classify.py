"""Classify a folder of cell images with a saved model.

Every file gets a row: a prediction with its probability and top 3, or the
reason it was skipped. On a folder in the class layout (one sub-folder per
class) the folder names are taken as labels and the run also reports
accuracy, balanced accuracy and per-class metrics.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from bloodlib import manifest
from bloodlib.io import write_with
from bloodlib.saved import load_classifier

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
        return "\n".join(lines)


def _list(folder: Path) -> list[str]:
    out = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames.sort()
        for f in sorted(filenames):
            out.append(Path(dirpath, f).relative_to(folder).as_posix())
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
) -> ClassifyResult:
    """Predict every image under ``folder``; unreadable files are reported, never fatal.

    ``engine`` (``auto``, ``keras``, ``tflite``) and ``tta`` (average over the 8 flips
    and rotations) apply to fine-tuned networks: see ``bloodlib.inference``.
    """
    import time

    start = time.perf_counter()
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"not a folder: {folder}")
    clf = load_classifier(model_path)
    if tta and clf.info["method"] == "svm":
        raise ValueError(
            f"{Path(model_path).name} is an SVM: test-time augmentation applies to fine-tuned networks"
        )
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

    metrics = None
    labels = good["relpath"].str.split("/").str[0] if len(good) else pd.Series(dtype=str)
    in_layout = len(good) and good["relpath"].str.contains("/").all() and labels.isin(classes).all()
    if in_layout:
        from bloodlib.evaluate import evaluate

        table.loc[np.flatnonzero(ok.to_numpy()), "label"] = labels.to_numpy()
        y = labels.map({c: i for i, c in enumerate(classes)}).to_numpy()
        metrics = evaluate(y, proba, classes, n_boot=200)

    out = None
    if out_csv:
        out = write_with(Path(out_csv), lambda p: table.to_csv(p, index=False), suffix=".csv")
    return ClassifyResult(
        table, skipped, differential, metrics, out, time.perf_counter() - start, clf.engine, tta
    )
