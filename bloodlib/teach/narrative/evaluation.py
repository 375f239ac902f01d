"""The sentences of notebook 04 (every model on the test split) that state a result.

Intervals and what they leave out, calibration, the test-time augmentation gain, the
ranking, the rejection threshold, the spread over training seeds and the mistakes every
seed shares: each computed from ``metrics.json`` entries or :mod:`bloodlib.evaluate` results.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from bloodlib.evaluate.compare import PairedComparison
from bloodlib.evaluate.seeds import seed_members
from bloodlib.predict import saliency
from bloodlib.teach.narrative.words import pct, points


def interval_sentence(entry: Mapping[str, Any]) -> str:
    """What the bootstrap interval of one metrics entry says, and what it leaves out."""
    name, acc, n = entry["name"], entry["test_accuracy"], entry["n_test"]
    ci = entry.get("accuracy_ci95")
    if not ci:
        return f"**{name}**: test accuracy {pct(acc)} on {n} cells (no bootstrap interval: n_boot = 0)."
    lo, hi = ci
    correct = round(acc * n)
    return (
        f"**{name}**: {correct} of {n} test cells right, {pct(acc)}; the 95 % bootstrap interval "
        f"runs from {pct(lo)} to {pct(hi)}, {100 * (hi - lo):.1f} points wide. Another test set of "
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
        f"**{row['model']}**: test-time augmentation moved accuracy from {pct(row['plain'])} to "
        f"{pct(row['tta'])} ({points(row['gain'])}) on the same {row['n']} cells; it fixed "
        f"{row['fixed']} and broke {row['broken']}. Paired 95 % bootstrap interval of the gain: "
        f"{points(lo)} to {points(hi)}; McNemar's exact p = {row['p_mcnemar']:.2g}."
    )
    if lo > 0:
        return head + " The interval lies above zero: on these cells TTA helps."
    if hi < 0:
        return head + " The interval lies below zero: on these cells TTA hurts."
    return head + " The interval includes zero: these cells cannot tell the gain from chance."


def ranking_sentence(
    entries: Sequence[Mapping[str, Any]],
    *,
    paired: tuple[str, str, PairedComparison] | None = None,
    smoke_test: bool = False,
) -> str:
    """Which model scored best, and whether its lead over the runner-up is more than noise.

    Scored on the same cells, two models are ranked by a paired test
    (``paired``: :func:`bloodlib.evaluate.leader_and_runner_up`), never by whether their
    two intervals overlap: the cells both get right or both get wrong say nothing about
    which is better.
    """
    ranked = sorted(entries, key=lambda e: e["test_accuracy"], reverse=True)
    if not ranked:
        return "No model was scored."
    best = ranked[0]
    text = f"Highest test accuracy: **{best['name']}**, {pct(best['test_accuracy'])}"
    ci = best.get("accuracy_ci95")
    if ci:
        text += f" (95 % interval {pct(ci[0])} to {pct(ci[1])})"
    text += f" on {best['n_test']} cells."
    if len(ranked) > 1:
        second = ranked[1]
        gap = best["test_accuracy"] - second["test_accuracy"]
        if gap == 0:
            text += f" Tied with {second['name']}: the same number of test cells right."
        else:
            text += f" Next: {second['name']}, {pct(second['test_accuracy'])} ({points(-gap)})."
        if paired is not None and paired[:2] == (best["name"], second["name"]):
            text += " " + paired_lead_sentence(*paired)
        elif gap:
            text += (
                " Whether the lead is more than the luck of the test cells takes a paired test on "
                "the same cells (`bloodlib.evaluate.paired_comparison`), not the two intervals."
            )
    if smoke_test:
        text += (
            " These are smoke-test numbers on the embedded sample; the full-data results are in "
            "the README's Results section."
        )
    return text


def paired_lead_sentence(leader: str, runner_up: str, c: PairedComparison) -> str:
    """The leader against the runner-up on the same cells: the cells that differ, the paired
    interval of the difference and McNemar's test, and what they allow one to say."""
    text = (
        f"On the same {c.n} cells, {leader} is right on {c.only_b} that {runner_up} gets wrong "
        f"and wrong on {c.only_a} that it gets right: {points(c.difference)} (paired 95 % "
        f"interval {points(c.ci95[0])} to {points(c.ci95[1])}; McNemar p = {c.p_mcnemar:.2g})."
    )
    if c.ci95[0] > 0:
        return text + " The lead is more than the luck of these test cells."
    return text + " The interval includes no difference: these cells do not tell the two apart."


def rejection_sentence(record: Mapping[str, Any]) -> str:
    """What the recorded threshold means, from :func:`record_rejection`'s numbers."""
    name, target = record["name"], record["target_accuracy"]
    threshold = record["reject_threshold"]
    unusable = record.get("unusable_threshold")
    if threshold is None and unusable is not None:
        return (
            f"**{name}**: the threshold that reaches {pct(target)} accuracy on the validation "
            f"cells ({unusable:.3f}) answers only {pct(record['val_coverage'])} of them, fewer "
            f"than {pct(record['min_coverage'], 0)}: a rule that refuses almost every cell is "
            "unusable, so none is recorded and `classify` answers every cell."
        )
    if threshold is None:
        return (
            f"**{name}**: no threshold reaches {pct(target)} accuracy on the validation cells, "
            "so none is recorded: `classify` answers every cell."
        )
    coverage = record.get("test_coverage")
    accuracy = record.get("test_accepted_accuracy")
    tail = ""
    if coverage == 0:
        tail = " On the test cells it answers none of them: all are marked `uncertain`."
    elif coverage is not None and accuracy is not None:
        tail = (
            f" On the test cells it answers {pct(coverage)} of them, "
            f"{pct(accuracy)} of those correctly; the rest are marked `uncertain`."
        )
    return (
        f"**{name}**: cells whose highest probability (after T = {record['temperature']:.2f}) is "
        f"below {threshold:.3f} are left unanswered; on the validation cells that keeps the "
        f"answered ones at {pct(target)} accuracy or better.{tail}"
    )


def saliency_sentence(check: Mapping[str, Any], deletion: Mapping[str, Any]) -> str:
    """What the two sanity checks of :mod:`bloodlib.predict.saliency` found, and what it means."""
    verdict = saliency.passes(check, deletion)
    n = len(check["rank_correlation"])
    rho = check["mean_rank_correlation"]
    first = (
        f"**Randomisation check**: with its top {len(check['layers'])} weighted layers "
        f"randomised, the network draws maps of the same {n} cells that correlate "
        f"{rho:.2f} with the trained network's (mean Spearman rank correlation; 1 would mean "
        "the map shows the image or the architecture, not what the network learnt). "
        + (
            "The maps depend on the trained weights."
            if verdict["randomisation"]
            else f"That is above {saliency.MAX_RANK_CORRELATION}: the maps barely depend on the "
            "trained weights, so they are no evidence of what the network learnt."
        )
    )
    second = (
        f"**Deletion test**: removing the most salient pixels first lowered the predicted "
        f"class's probability faster than removing them in a random order on "
        f"{pct(deletion['faster_than_random'], 0)} of the cells (mean area under the curve "
        f"{deletion['mean_auc_salient']:.2f} against {deletion['mean_auc_random']:.2f}; lower "
        f"is faster; one-sided paired Wilcoxon p = {deletion['p_value']:.2g}). "
        + (
            "The maps point at pixels the network needs."
            if verdict["deletion"]
            else "Not shown on these cells: the maps do not pick out the pixels the network "
            "needs better than chance does, so read them with care."
        )
    )
    return f"{first}\n\n{second}"


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
        f"the same split: test accuracy {pct(row['accuracy_mean'])} on average, standard "
        f"deviation {100 * std:.2f} points (from {pct(min(accs))} to {pct(max(accs))})."
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
