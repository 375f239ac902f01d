"""Score a run's saved models on its test split (notebook 04).

One :class:`Evaluation` per model (and per model with test-time augmentation), the
``metrics.json`` the runner and the README read, and the comparisons notebook 04 explains:
the paired TTA gain with its uncertainty, and calibration put into words. Every sentence a
notebook states about these results is built here from the numbers, never typed by hand.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from bloodlib import CLASS_INDEX, CLASSES
from bloodlib.core import paper
from bloodlib.core.config import DEFAULT_SEED
from bloodlib.core.io import read_json, write_json
from bloodlib.evaluate import metrics as ev
from bloodlib.models.saved import model_seed

#: Model files a run folder holds (each beside its JSON sidecar).
MODEL_SUFFIXES = (".keras", ".joblib", ".skops")

# Paired bootstrap index matrices are drawn in chunks of at most this many entries, so
# n_boot x n stays within a few hundred MB on large test sets.
_CHUNK_ENTRIES = 20_000_000


@dataclass
class Evaluation:
    """One model scored on the test split.

    ``metrics`` is its ``metrics.json`` entry; the arrays follow the rows of ``test``
    (the test split in ``split.csv`` order).
    """

    metrics: dict[str, Any]
    test: pd.DataFrame
    y_true: np.ndarray
    proba: np.ndarray
    proba_scaled: np.ndarray  # after temperature scaling fitted on the validation split
    predictions: np.ndarray
    #: Validation probabilities and labels (unscaled), for choices made after training.
    proba_val: np.ndarray | None = None
    y_val: np.ndarray | None = None

    @property
    def name(self) -> str:
        return str(self.metrics["name"])

    @property
    def correct(self) -> np.ndarray:
        return self.predictions == self.y_true


def label_indices(labels: pd.Series) -> np.ndarray:
    return labels.map(CLASS_INDEX).to_numpy()


def saved_models(run_dir: str | Path) -> list[Path]:
    """Model files of a run (``models/*`` with a sidecar), in name order."""
    folder = Path(run_dir) / "models"
    return sorted(
        p
        for p in folder.glob("*")
        if p.suffix in MODEL_SUFFIXES and p.with_suffix(".json").is_file()
    )


def study_models(run_dir: str | Path) -> list[Path]:
    """The models notebook 04 scores: notebooks 02 and 03's, without notebook 05's robust
    network (scored by notebook 05 itself), so that notebook 04 reports the same models
    whether or not notebook 05 has run in this folder before."""
    from bloodlib.core.config import ROBUST_SUFFIX, split_seed_name

    return [
        p for p in saved_models(run_dir) if not split_seed_name(p.stem)[0].endswith(ROBUST_SUFFIX)
    ]


def evaluate_model(
    model_path: str | Path,
    split: pd.DataFrame,
    *,
    n_boot: int = 1000,
    seed: int = DEFAULT_SEED,
    progress: bool = False,
    tta: bool = False,
    classifier: Any = None,
) -> Evaluation:
    """Score one saved model on the test split, with temperature scaling fitted on validation.

    With ``tta`` the probabilities are averaged over the 8 flips and rotations of each cell
    and the entry is named ``<name>_tta``. ECE uses :func:`bloodlib.evaluate.metrics.calibration_bins`
    bins for the test set's size (``ece_bins`` in the entry).
    """
    from bloodlib.models.saved import load_classifier

    model_path = Path(model_path)
    clf = classifier or load_classifier(model_path)
    probs = {}
    for part in ("val", "test"):
        rows = split[split["split"] == part]
        if len(rows):
            probs[part] = clf.predict_proba(
                rows["path"].tolist(), hashes=rows["sha256"].tolist(), progress=progress, tta=tta
            )
    if "test" not in probs:
        raise ValueError("the split has no test rows: run notebook 01 to make the split")
    test = split[split["split"] == "test"].reset_index(drop=True)
    y_test = label_indices(test["label"])
    p_test = probs["test"]
    metrics = ev.evaluate(y_test, p_test, list(CLASSES), n_boot=n_boot, seed=seed)
    n_bins = ev.calibration_bins(len(test))
    temperature = 1.0
    p_scaled = p_test
    n_val = int((split["split"] == "val").sum())
    y_val = None
    if "val" in probs:
        y_val = label_indices(split[split["split"] == "val"]["label"])
        temperature = ev.fit_temperature(ev.logits_from_proba(probs["val"]), y_val)
        p_scaled = ev.softmax(ev.logits_from_proba(p_test), temperature)
    info = clf.info
    entry = {
        "name": info["name"] + ("_tta" if tta else ""),
        "backbone": info["backbone"],
        "method": info["method"],
        "image_size": info["image_size"],
        "tta": tta,
        "seed": model_seed(info),
        "engine": clf.engine,
        "test_accuracy": metrics["accuracy"],
        "balanced_accuracy": metrics["balanced_accuracy"],
        "accuracy_ci95": metrics["accuracy_ci95"],
        "balanced_accuracy_ci95": metrics["balanced_accuracy_ci95"],
        "n_boot": n_boot,
        "macro_f1": metrics["macro_f1"],
        "macro_auc": metrics["macro_auc"],
        "per_class": metrics["per_class"],
        "confusion": metrics["confusion"],
        "ece": ev.expected_calibration_error(y_test, p_test, n_bins),
        "ece_bins": n_bins,
        "temperature": temperature,
        "ece_after_scaling": ev.expected_calibration_error(y_test, p_scaled, n_bins),
        "n_test": int(len(test)),
        "n_val": n_val,
        "model_path": model_path.relative_to(model_path.parents[1]).as_posix(),
        "paper_accuracy": paper.ACCURACY.get((info["backbone"], info["method"])),
    }
    if info.get("ensemble"):  # bloodlib.models.ensemble: the networks it averages, by name
        entry["ensemble"] = [m["name"] for m in info["ensemble"]["members"]]
    return Evaluation(
        entry, test, y_test, p_test, p_scaled, p_test.argmax(axis=1), probs.get("val"), y_val
    )


def seed_models(
    model_paths: Sequence[Path], seed: int = DEFAULT_SEED, n_seeds: int = 1
) -> tuple[list[Path], list[Path]]:
    """``(first, others)``: the first seed's models (names without a seed) and those of this
    run's later training seeds (:func:`bloodlib.core.config.seed_model_name`), in path order.

    A ``_seed<N>`` model of a seed outside ``seed .. seed + n_seeds - 1`` (left by an earlier
    run with more seeds) is in neither list, so it cannot leak into this run's spread.
    """
    from bloodlib.core.config import split_seed_name, training_seeds

    later = set(training_seeds(seed, n_seeds)[1:])
    first, others = [], []
    for path in model_paths:
        _, s = split_seed_name(Path(path).stem)
        if s is None:
            first.append(Path(path))
        elif s in later:
            others.append(Path(path))
    return first, others


def evaluate_models(
    model_paths: Sequence[Path],
    split: pd.DataFrame,
    *,
    tta: bool = True,
    **kwargs: Any,
) -> list[Evaluation]:
    """:func:`evaluate_model` for every model; fine-tuned networks also with ``tta`` when asked."""
    from bloodlib.models.saved import load_classifier

    results = []
    for path in model_paths:
        clf = load_classifier(path)
        results.append(evaluate_model(path, split, classifier=clf, **kwargs))
        if tta and clf.info["method"] == "finetune":
            results.append(evaluate_model(path, split, classifier=clf, tta=True, **kwargs))
    return results


def write_metrics(
    run_dir: str | Path, results: Sequence[Evaluation | Mapping[str, Any]], **extra: Any
) -> Path:
    """``metrics.json``: ``{"models": [entry, ...], **extra}`` (entries of ``results``)."""
    models = [dict(r.metrics if isinstance(r, Evaluation) else r) for r in results]
    return write_json(Path(run_dir) / "metrics.json", {"models": models, **extra})


def read_metrics(run_dir: str | Path) -> dict[str, Any]:
    return read_json(Path(run_dir) / "metrics.json")


def same_test_cells(results: Sequence[Evaluation]) -> int:
    """The number of test cells every result was scored on; raises if they differ."""
    if not results:
        raise ValueError("no results to compare")
    first = results[0].test["path"].tolist()
    for r in results[1:]:
        if r.test["path"].tolist() != first:
            raise ValueError(f"{r.name} was scored on other test cells than {results[0].name}")
    return len(first)


# ----------------------------------------------------------------------------- paired comparison


@dataclass
class PairedComparison:
    """Two models' answers on the same cells: accuracy difference ``b - a`` and its uncertainty."""

    n: int
    accuracy_a: float
    accuracy_b: float
    difference: float  # accuracy_b - accuracy_a
    ci95: tuple[float, float]  # paired percentile bootstrap of the difference
    only_a: int  # cells a gets right and b wrong
    only_b: int  # cells b gets right and a wrong
    p_mcnemar: float  # exact two-sided McNemar test on the discordant cells


def paired_comparison(
    y_true: Any,
    pred_a: Any,
    pred_b: Any,
    *,
    n_boot: int = 1000,
    seed: int = DEFAULT_SEED,
) -> PairedComparison:
    """Compare two sets of predictions on the same cells.

    The bootstrap resamples cells (both models keep their answers on each drawn cell), so
    the interval reflects only the cells on which they disagree. McNemar's exact test asks
    whether ``only_b`` vs ``only_a`` is more lopsided than 50/50 chance would make it.
    """
    from scipy.stats import binomtest

    y = np.asarray(y_true)
    ca = np.asarray(pred_a) == y
    cb = np.asarray(pred_b) == y
    n = len(y)
    if n == 0 or len(ca) != n or len(cb) != n:
        raise ValueError("y_true, pred_a and pred_b must have the same, non-zero length")
    if n_boot < 1:
        raise ValueError("n_boot must be >= 1")
    delta = cb.astype(np.float64) - ca.astype(np.float64)
    rng = np.random.default_rng(seed)
    per_chunk = max(1, _CHUNK_ENTRIES // n)
    diffs = []
    done = 0
    while done < n_boot:
        b = min(per_chunk, n_boot - done)
        diffs.append(delta[rng.integers(0, n, size=(b, n))].mean(axis=1))
        done += b
    lo, hi = np.percentile(np.concatenate(diffs), [2.5, 97.5])
    only_a, only_b = int((ca & ~cb).sum()), int((cb & ~ca).sum())
    discordant = only_a + only_b
    p = binomtest(min(only_a, only_b), discordant, 0.5).pvalue if discordant else 1.0
    return PairedComparison(
        n=n,
        accuracy_a=float(ca.mean()),
        accuracy_b=float(cb.mean()),
        difference=float(delta.mean()),
        ci95=(float(lo), float(hi)),
        only_a=only_a,
        only_b=only_b,
        p_mcnemar=float(p),
    )


def tta_gains(
    results: Sequence[Evaluation], *, n_boot: int = 1000, seed: int = DEFAULT_SEED
) -> pd.DataFrame:
    """Plain vs test-time-augmented predictions of each fine-tuned network, paired per cell.

    Columns: model, n, plain, tta, gain, ci_lo, ci_hi, fixed (cells TTA got right that the
    plain model got wrong), broken (the reverse), p_mcnemar. Empty without TTA entries.
    """
    plain = {r.metrics["model_path"]: r for r in results if not r.metrics.get("tta")}
    rows = []
    for r in results:
        base = plain.get(r.metrics["model_path"])
        if not r.metrics.get("tta") or base is None:
            continue
        c = paired_comparison(r.y_true, base.predictions, r.predictions, n_boot=n_boot, seed=seed)
        rows.append(
            {
                "model": base.name,
                "n": c.n,
                "plain": c.accuracy_a,
                "tta": c.accuracy_b,
                "gain": c.difference,
                "ci_lo": c.ci95[0],
                "ci_hi": c.ci95[1],
                "fixed": c.only_b,
                "broken": c.only_a,
                "p_mcnemar": c.p_mcnemar,
            }
        )
    columns = ["model", "n", "plain", "tta", "gain", "ci_lo", "ci_hi", "fixed", "broken"]
    return pd.DataFrame(rows, columns=[*columns, "p_mcnemar"])


# ----------------------------------------------------------------------------- sentences


def _pct(x: float) -> str:
    return f"{100 * x:.1f} %"


def _points(x: float) -> str:
    value = round(100 * x, 1) + 0.0  # + 0.0 turns -0.0 into 0.0
    return f"{value:+.1f} points"


def interval_sentence(entry: Mapping[str, Any]) -> str:
    """What the bootstrap interval of one metrics entry says, and what it leaves out."""
    name, acc, n = entry["name"], entry["test_accuracy"], entry["n_test"]
    ci = entry.get("accuracy_ci95")
    if not ci:
        return f"**{name}**: test accuracy {_pct(acc)} on {n} cells (no bootstrap interval: n_boot = 0)."
    lo, hi = ci
    correct = round(acc * n)
    return (
        f"**{name}**: {correct} of {n} test cells right, {_pct(acc)}; the 95 % bootstrap interval "
        f"runs from {_pct(lo)} to {_pct(hi)}, {100 * (hi - lo):.1f} points wide. Another test set of "
        f"{n} cells like this one could plausibly have given any accuracy in that range. The interval "
        "says nothing about training: the same recipe with another seed gives another network, "
        "and that variation comes on top."
    )


def calibration_sentence(entry: Mapping[str, Any]) -> str:
    """Temperature and ECE before/after scaling of one metrics entry, in words."""
    name, t = entry["name"], float(entry["temperature"])
    before, after = float(entry["ece"]), float(entry["ece_after_scaling"])
    bins, n_val = entry.get("ece_bins"), entry.get("n_val")
    if np.isclose(t, 1.0, atol=0.02):
        meaning = f"T = {t:.2f}, close to 1: the validation cells found its confidence about right"
    elif t < 1:
        meaning = (
            f"T = {t:.2f} < 1: on the validation cells it was under-confident, so scaling "
            "sharpens its probabilities"
        )
    else:
        meaning = (
            f"T = {t:.2f} > 1: on the validation cells it was over-confident, so scaling "
            "softens its probabilities"
        )
    if after < before - 0.005:
        effect = f"ECE on the test cells fell from {before:.3f} to {after:.3f}"
    elif after > before + 0.005:
        effect = (
            f"ECE on the test cells rose from {before:.3f} to {after:.3f}: the temperature fitted "
            f"on {n_val} validation cells did not carry over to the test cells"
        )
    else:
        effect = f"ECE on the test cells barely moved ({before:.3f} to {after:.3f})"
    return f"**{name}**: {meaning}; {effect} ({bins} bins)."


def calibration_summary(entries: Sequence[Mapping[str, Any]]) -> str:
    """How often temperature scaling helped across models: the claim notebook 04 may make."""
    better = sum(e["ece_after_scaling"] < e["ece"] - 0.005 for e in entries)
    worse = sum(e["ece_after_scaling"] > e["ece"] + 0.005 for e in entries)
    n = len(entries)
    if better == n:
        verdict = "Temperature scaling lowered the ECE of every model here."
    elif better == 0:
        verdict = "Temperature scaling lowered the ECE of no model here."
    else:
        verdict = f"Temperature scaling lowered the ECE of {better} of {n} models here."
    if worse:
        verdict += (
            f" It raised it for {worse}: with few validation cells the fitted temperature is itself "
            "uncertain, and ECE over few test cells is noisy."
        )
    return verdict


def tta_sentence(row: Mapping[str, Any]) -> str:
    """One row of :func:`tta_gains` in words, with its uncertainty."""
    lo, hi = row["ci_lo"], row["ci_hi"]
    head = (
        f"**{row['model']}**: test-time augmentation moved accuracy from {_pct(row['plain'])} to "
        f"{_pct(row['tta'])} ({_points(row['gain'])}) on the same {row['n']} cells; it fixed "
        f"{row['fixed']} and broke {row['broken']}. Paired 95 % bootstrap interval of the gain: "
        f"{_points(lo)} to {_points(hi)}; McNemar's exact p = {row['p_mcnemar']:.2g}."
    )
    if lo > 0:
        return head + " The interval lies above zero: on these cells TTA helps."
    if hi < 0:
        return head + " The interval lies below zero: on these cells TTA hurts."
    return head + " The interval includes zero: these cells cannot tell the gain from chance."


def ranking_sentence(entries: Sequence[Mapping[str, Any]], *, smoke_test: bool = False) -> str:
    """Which model scored best, and whether its lead over the runner-up is more than noise.

    Lead "within noise" means the runner-up's accuracy lies inside the leader's 95 %
    bootstrap interval (a rough check; :func:`paired_comparison` is the careful one).
    """
    ranked = sorted(entries, key=lambda e: e["test_accuracy"], reverse=True)
    if not ranked:
        return "No model was scored."
    best = ranked[0]
    text = f"Highest test accuracy: **{best['name']}**, {_pct(best['test_accuracy'])}"
    ci = best.get("accuracy_ci95")
    if ci:
        text += f" (95 % interval {_pct(ci[0])} to {_pct(ci[1])})"
    text += f" on {best['n_test']} cells."
    if len(ranked) > 1:
        second = ranked[1]
        gap = best["test_accuracy"] - second["test_accuracy"]
        if gap == 0:
            text += f" Tied with {second['name']}: the same number of test cells right."
        else:
            text += f" Next: {second['name']}, {_pct(second['test_accuracy'])} ({_points(-gap)})."
        if gap and ci and ci[0] <= second["test_accuracy"]:
            text += " The runner-up lies inside the leader's interval: this ranking could flip on another test set."
    if smoke_test:
        text += (
            " These are smoke-test numbers on the embedded sample; the full-data results are in "
            "the README's Results section."
        )
    return text


def record_rejection(
    run_dir: str | Path, result: Evaluation, target_accuracy: float | None = None
) -> dict[str, Any]:
    """Write the fitted temperature and a rejection threshold into the model's sidecar.

    The threshold is chosen on the validation cells only (:func:`bloodlib.evaluate.reject.choose_threshold`
    on the temperature-scaled probabilities): the smallest maximum probability whose accepted
    validation cells reach ``target_accuracy``. ``classify`` then marks cells below it
    ``uncertain`` by default. Returns what was recorded and what the rule does on the test
    cells (coverage and accuracy of the accepted ones), for the notebook's sentence.
    """
    from bloodlib.evaluate import reject
    from bloodlib.models.saved import update_sidecar

    if result.metrics.get("tta"):
        raise ValueError("record the plain model's temperature, not the TTA entry's")
    if result.proba_val is None or result.y_val is None:
        raise ValueError(f"{result.name}: no validation cells to choose a threshold on")
    target = reject.TARGET_ACCURACY if target_accuracy is None else target_accuracy
    t = float(result.metrics["temperature"])
    threshold = reject.choose_threshold(
        reject.scale(result.proba_val, t), result.y_val, target_accuracy=target
    )
    update_sidecar(
        Path(run_dir) / result.metrics["model_path"], temperature=t, reject_threshold=threshold
    )
    on_test = reject.accepted_metrics(result.proba_scaled, result.y_true, threshold)
    return {
        "name": result.name,
        "temperature": t,
        "reject_threshold": threshold,
        "target_accuracy": target,
        **{f"test_{k}": v for k, v in on_test.items()},
    }


def rejection_sentence(record: Mapping[str, Any]) -> str:
    """What the recorded threshold means, from :func:`record_rejection`'s numbers."""
    name, target = record["name"], record["target_accuracy"]
    threshold = record["reject_threshold"]
    if threshold is None:
        return (
            f"**{name}**: no threshold reaches {_pct(target)} accuracy on the validation cells, "
            "so none is recorded: `classify` answers every cell."
        )
    coverage = record.get("test_coverage")
    accuracy = record.get("test_accepted_accuracy")
    tail = ""
    if coverage == 0:
        tail = " On the test cells it answers none of them: all are marked `uncertain`."
    elif coverage is not None and accuracy is not None:
        tail = (
            f" On the test cells it answers {_pct(coverage)} of them, "
            f"{_pct(accuracy)} of those correctly; the rest are marked `uncertain`."
        )
    return (
        f"**{name}**: cells whose highest probability (after T = {record['temperature']:.2f}) is "
        f"below {threshold:.3f} are left unanswered; on the validation cells that keeps the "
        f"answered ones at {_pct(target)} accuracy or better.{tail}"
    )


# ----------------------------------------------------------------------------- seeds

#: Keys of each :func:`seed_spread` row, in order.
SPREAD_KEYS = (
    "name",
    "model",
    "backbone",
    "method",
    "tta",
    "n_seeds",
    "seeds",
    "accuracy_mean",
    "accuracy_std",
    "balanced_accuracy_mean",
    "balanced_accuracy_std",
)


#: Columns of :func:`seed_table`, in order (the name says which model, and whether TTA).
SEED_TABLE_COLUMNS = (
    "name",
    "n_seeds",
    "seeds",
    "accuracy_mean",
    "accuracy_std",
    "ci_lo",
    "ci_hi",
    "ci_width",
    "balanced_accuracy_mean",
    "balanced_accuracy_std",
)


def _mean_std(values: Sequence[float]) -> tuple[float, float | None]:
    x = np.asarray(values, dtype=np.float64)
    # ddof=1: the seeds are a sample of the training runs the recipe could give.
    return float(x.mean()), (float(x.std(ddof=1)) if len(x) > 1 else None)


def seed_group(entry: Mapping[str, Any]) -> tuple[str, bool]:
    """``(model, tta)``: which model a metrics entry is one training seed of. ``model`` is the
    first seed's model name (its file stem without ``_seed<N>``), so two different recipes of
    one backbone (e.g. ``_finetune`` and ``_robust``) never pool into one spread."""
    from bloodlib.core.config import split_seed_name

    tta = bool(entry.get("tta"))
    path = entry.get("model_path")
    if path:
        stem = Path(path).stem
    else:  # an entry without its file: its name, less the TTA suffix
        stem = str(entry["name"]).removesuffix("_tta") if tta else str(entry["name"])
    return split_seed_name(stem)[0], tta


def seed_members(
    entries: Sequence[Mapping[str, Any]], row: Mapping[str, Any]
) -> list[Mapping[str, Any]]:
    """The entries of one :func:`seed_spread` row, in ``entries`` order."""
    return [e for e in entries if seed_group(e) == (row["model"], bool(row["tta"]))]


def seed_spread(entries: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Mean and standard deviation (ddof=1; ``None`` for one seed) over training seeds.

    One row per model and TTA (:func:`seed_group`: the ``_seed<N>`` models of a run pool with
    their first seed's), in the order the groups first appear in ``entries`` (metrics entries
    with ``seed``, ``test_accuracy`` and ``balanced_accuracy``); ``name`` is the group's first
    entry (the first seed's model when it comes first). Keys: :data:`SPREAD_KEYS`. Two entries
    of one group with the same seed are an error: the same training counted twice would shrink
    the spread. An ensemble's entry (``ensemble`` set: an average of the seeds, not one more
    of them) is left out.
    """
    groups: dict[tuple, list[Mapping[str, Any]]] = {}
    for e in entries:
        if not e.get("ensemble"):
            groups.setdefault(seed_group(e), []).append(e)
    rows = []
    for (model, tta), members in groups.items():
        seeds = [m.get("seed") for m in members]
        if len(set(seeds)) < len(seeds):
            raise ValueError(
                f"{model}{' tta' if tta else ''}: seeds {seeds} repeat; score each training "
                "seed once (scoring.seed_models picks one model per seed)"
            )
        acc_mean, acc_std = _mean_std([m["test_accuracy"] for m in members])
        bal_mean, bal_std = _mean_std([m["balanced_accuracy"] for m in members])
        rows.append(
            {
                "name": members[0]["name"],
                "model": model,
                "backbone": members[0]["backbone"],
                "method": members[0]["method"],
                "tta": tta,
                "n_seeds": len(members),
                "seeds": seeds,
                "accuracy_mean": acc_mean,
                "accuracy_std": acc_std,
                "balanced_accuracy_mean": bal_mean,
                "balanced_accuracy_std": bal_std,
            }
        )
    return rows


def seed_table(
    spread: Sequence[Mapping[str, Any]], entries: Sequence[Mapping[str, Any]]
) -> pd.DataFrame:
    """:func:`seed_spread` rows as a table, beside the first seed's bootstrap interval
    (``ci_lo``, ``ci_hi``, ``ci_width``, looked up by ``name`` in ``entries``). Columns:
    :data:`SEED_TABLE_COLUMNS`."""
    by_name = {e["name"]: e for e in entries}
    rows = []
    for row in spread:
        ci = (by_name.get(row["name"]) or {}).get("accuracy_ci95") or (np.nan, np.nan)
        rows.append(
            {
                **row,
                "seeds": ", ".join(str(s) for s in row["seeds"]),
                "ci_lo": float(ci[0]),
                "ci_hi": float(ci[1]),
                "ci_width": float(ci[1]) - float(ci[0]),
            }
        )
    return pd.DataFrame(rows, columns=list(SEED_TABLE_COLUMNS))


def seed_sentence(row: Mapping[str, Any], entries: Sequence[Mapping[str, Any]]) -> str:
    """One :func:`seed_spread` row in words: the spread over seeds against the width of the
    first seed's bootstrap interval (test-sample luck). With one seed, how to run several."""
    name, n = row["name"], int(row["n_seeds"])
    if n < 2 or row.get("accuracy_std") is None:
        return (
            f"**{name}**: one training seed ({row['seeds'][0]}), so there is no spread over "
            "training runs to report. Repeat the training over three seeds on the same split "
            "with `python -m bloodlib run --profile sample -p n_seeds=3` (any profile takes it)."
        )
    accs = [e["test_accuracy"] for e in seed_members(entries, row)]
    std = float(row["accuracy_std"])
    text = (
        f"**{name}** over {n} training seeds ({', '.join(str(s) for s in row['seeds'])}) on "
        f"the same split: test accuracy {_pct(row['accuracy_mean'])} on average, standard "
        f"deviation {100 * std:.2f} points (from {_pct(min(accs))} to {_pct(max(accs))})."
    )
    ci = next((e.get("accuracy_ci95") for e in entries if e["name"] == name), None)
    if max(accs) == min(accs):  # std may be a rounding error above 0
        return text + (
            " Every seed gave the same test accuracy (the models may still differ cell by "
            "cell): on accuracy, the seed made no difference here."
        )
    if not ci:
        return text
    width = ci[1] - ci[0]
    # About 95 % of a normal spread lies within +-2 standard deviations: a width of 4 std.
    ratio = 4 * std / width if width > 0 else np.inf
    if ratio < 0.5:
        verdict = (
            "much narrower than that: on this test set, which cells happen to be drawn moves "
            "the accuracy more than the training seed does"
        )
    elif ratio <= 1.5:
        verdict = (
            "comparable: the training seed matters about as much as the luck of the test sample"
        )
    else:
        verdict = (
            "wider than that: one training run's interval understates the uncertainty, "
            "report the mean over seeds"
        )
    return text + (
        f" The first seed's 95 % bootstrap interval is {100 * width:.1f} points wide; four "
        f"standard deviations (about 95 % of a normal spread) span {100 * 4 * std:.1f} points, "
        f"{verdict}. With {n} seeds the standard deviation is itself rough: treat it as an "
        "order of magnitude."
    )


def seed_sentences(
    spread: Sequence[Mapping[str, Any]], entries: Sequence[Mapping[str, Any]]
) -> list[str]:
    """:func:`seed_sentence` of every model trained with several seeds; when none was, one
    sentence for the whole run saying how to repeat the training over seeds."""
    several = [row for row in spread if row["n_seeds"] > 1]
    if several:
        return [seed_sentence(row, entries) for row in several]
    seeds = sorted({s for row in spread for s in row["seeds"] if s is not None})
    which = f" ({', '.join(str(s) for s in seeds)})" if seeds else ""
    return [
        f"Every model here was trained with one seed{which}, so the bootstrap intervals above "
        "are the only uncertainty measured: the spread between training runs is not. "
        "`python -m bloodlib run --profile sample -p n_seeds=3` repeats the SVM and the "
        "fine-tuning with three seeds on the same split, and this section then shows it."
    ]


def seed_mistakes(results: Sequence[Evaluation]) -> dict[str, pd.DataFrame]:
    """:func:`bloodlib.evaluate.metrics.shared_mistakes` of every model trained with several seeds.

    Keyed by the first seed's model name; plain predictions only (a TTA entry is the same
    network), ensembles left out (an average of the seeds, not one more of them). Models
    with one seed are left out: there is nothing to share.
    """
    groups: dict[str, list[Evaluation]] = {}
    for r in results:
        if not r.metrics.get("tta") and not r.metrics.get("ensemble"):
            groups.setdefault(seed_group(r.metrics)[0], []).append(r)
    out = {}
    for members in groups.values():
        if len(members) < 2:
            continue
        same_test_cells(members)
        first = members[0]
        out[first.name] = ev.shared_mistakes(
            first.y_true, [m.proba for m in members], first.test["path"].tolist(), list(CLASSES)
        )
    return out


def seed_mistakes_record(
    mistakes: Mapping[str, pd.DataFrame], test: pd.DataFrame
) -> list[dict[str, Any]]:
    """:func:`seed_mistakes` for ``metrics.json``: per model, how many test cells some seed
    and every seed got wrong, and which (``relpath`` of ``test``, the split's test rows)."""
    names = test["relpath"] if "relpath" in test.columns else test["path"]
    rows = []
    for name, df in mistakes.items():
        every = df[df["n_wrong"] == df["n_models"]]
        rows.append(
            {
                "name": name,
                "n_models": int(df.attrs["n_models"]),
                "n_test": len(test),
                "wrong_for_some_seed": len(df),
                "wrong_for_every_seed": len(every),
                "every_seed_wrong": [
                    {"relpath": str(names.iloc[i]), "true": t, "pred": p}
                    for i, t, p in zip(every["index"], every["true"], every["pred"], strict=True)
                ],
            }
        )
    return rows


def seed_mistakes_sentence(name: str, mistakes: pd.DataFrame, n_test: int) -> str:
    """How many of a model's mistakes every seed makes, and between which classes."""
    if mistakes.empty:
        return f"**{name}**: no seed misclassified any of the {n_test} test cells."
    n = int(mistakes["n_models"].iloc[0])
    every = mistakes[mistakes["n_wrong"] == n]
    mean_errors = mistakes["n_wrong"].sum() / n
    text = (
        f"**{name}**: {len(mistakes)} of the {n_test} test cells are misclassified by at least "
        f"one of its {n} seeds, {mean_errors:.1f} by each seed on average; "
        f"**{len(every)}** by every seed."
    )
    if every.empty:
        return text + (
            " No mistake is shared by all seeds: each is some training run's own, the kind an "
            "average of the seeds can correct."
        )
    pairs = (every["true"] + " → " + every["pred"]).value_counts()
    top = ", ".join(f"{pair} ({count})" for pair, count in pairs.head(3).items())
    more = f" and {len(pairs) - 3} other pair(s)" if len(pairs) > 3 else ""
    return text + (
        f" Those {len(every)} ({100 * len(every) / n_test:.2f} % of the test set: {top}{more}) "
        "are a floor that training again with another seed does not lift: what the recipe "
        "cannot separate, ambiguous cells, or labels to check. Look at them below before "
        "trusting a difference of that size between two recipes."
    )
