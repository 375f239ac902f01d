"""Time to accuracy: how fast each fine-tuning recipe gets where, from finished runs.

Training is too long to repeat inside a benchmark on 2 CPU cores, so this script reads what
``finetune.train`` records in each run folder: ``train/<name>/history.csv`` (validation
accuracy and wall time at the end of every epoch), the model's sidecar (``train_seconds``,
the recipe, the head-on-features timings) and ``metrics.json`` (test accuracy). One row per
fine-tuned model; ``--baseline RUN`` adds each model's ``train_seconds`` as a fraction of the
baseline's (a ratio of two runs on the same machine: name them so).

    .venv/bin/python benchmarks/time_to_accuracy.py runs/full-dev-2 runs/fast-dev \\
        --baseline runs/full-dev-2 [--targets 0.97 0.98] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import _common as C  # first: sets the cache path and sys.path before bloodlib
import pandas as pd

#: The recipe knobs a row shows (FinetuneConfig fields), in this order.
RECIPE = (
    "image_size",
    "head_on_features",
    "epochs_head",
    "epochs_finetune",
    "warmup_epochs",
    "unfreeze_from_block",
    "learning_rate_finetune",
    "batch_size",
    "augment_domain",
    "augment_stain",
    "seed",
)


def rows_for(run_dir: Path, targets: list[float]) -> list[dict]:
    """One row per fine-tuned model of ``run_dir`` (method ``finetune``, without TTA)."""
    from bloodlib.core.io import read_json
    from bloodlib.models.saved import read_sidecar
    from bloodlib.train.finetune import load_history, time_to_accuracy

    metrics = read_json(run_dir / "metrics.json") if (run_dir / "metrics.json").is_file() else {}
    tests = {
        m["name"]: m
        for m in metrics.get("models", [])
        if m.get("method") == "finetune" and not m.get("tta")
    }
    rows = []
    for model in sorted((run_dir / "models").glob("*.keras")):
        side = read_sidecar(model)
        if side.get("method") != "finetune":
            continue
        cfg = side.get("config", {})
        hist = load_history(run_dir / "train" / model.stem)
        m = side.get("metrics", {})
        head = m.get("head_on_features") or {}
        ft = hist[hist["phase"] == "fine-tune"]
        row = {
            "run": run_dir.name,
            "model": model.stem,
            **{k: cfg.get(k) for k in RECIPE},
            "train_seconds": m.get("train_seconds"),
            "head_phase_seconds": (
                float(hist[hist["phase"] == "head"]["seconds"].max())
                if "seconds" in hist and (hist["phase"] == "head").any()
                else None
            ),
            "feature_seconds": head.get("feature_seconds"),
            "finetune_epoch_seconds": (
                float(ft["seconds"].diff().median()) if "seconds" in ft and len(ft) > 1 else None
            ),
            "best_val_accuracy": m.get("best_val_accuracy"),
            "test_accuracy": tests.get(model.stem, {}).get("test_accuracy"),
            "n_test": tests.get(model.stem, {}).get("n_test"),
        }
        for t in targets:
            row[f"seconds_to_val_{t:g}"] = time_to_accuracy(hist, t)
        rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+", type=Path, help="run folders (runs/NAME)")
    p.add_argument("--baseline", type=Path, help="the run whose train_seconds is 1.0")
    p.add_argument("--targets", type=float, nargs="+", default=[0.95, 0.97, 0.98])
    p.add_argument("--json", type=Path, help="also write the rows and machine facts as JSON")
    args = p.parse_args(argv)
    rows = [r for run in args.runs for r in rows_for(run, args.targets)]
    if not rows:
        print("no fine-tuned models in these runs", file=sys.stderr)
        return 1
    table = pd.DataFrame(rows)
    if args.baseline is not None:
        base = [r for r in rows_for(args.baseline, args.targets)]
        if base and base[0]["train_seconds"]:
            table["fraction_of_baseline"] = table["train_seconds"] / base[0]["train_seconds"]
    with pd.option_context("display.width", 200, "display.max_columns", 40):
        print(table.T.to_string(header=False))
    if args.json:
        out = {"rows": rows, "machine": C.machine()}
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(out, indent=1, default=str) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
