"""Scoring predictions: plain NumPy arrays in, numbers a hematologist can check out.

No TensorFlow here: the same metrics serve the SVM and the fine-tuned networks.

- :mod:`~bloodlib.evaluate.metrics`: accuracy, balanced accuracy, per-class rates and AUC,
  with bootstrap intervals (:func:`evaluate`, :func:`bootstrap_ci`, :func:`per_class_table`);
- :mod:`~bloodlib.evaluate.calibration`: reliability, ECE, softmax, temperature scaling;
- :mod:`~bloodlib.evaluate.compare`: a table of models, and two models compared on the same
  cells (:func:`paired_comparison`: paired bootstrap and McNemar);
- :mod:`~bloodlib.evaluate.mistakes`: the cells a model, or every seed, gets wrong;
- :mod:`~bloodlib.evaluate.reject`: leaving uncertain cells unanswered;
- :mod:`~bloodlib.evaluate.results`: a scored model (:class:`Evaluation`) and ``metrics.json``;
- :mod:`~bloodlib.evaluate.seeds`: the spread of a recipe over training seeds;
- :mod:`~bloodlib.evaluate.arrays`: the input checks and bootstrap resamples they share.

The names below are re-exported here so that a notebook can write ``evaluate.bootstrap_ci``;
each lives in one module.
"""

from bloodlib.evaluate.calibration import (
    calibration_bins,
    expected_calibration_error,
    fit_temperature,
    log_average,
    logits_from_proba,
    reliability_table,
    softmax,
)
from bloodlib.evaluate.compare import (
    PairedComparison,
    comparison_table,
    leader_and_runner_up,
    paired_comparison,
    tta_gains,
)
from bloodlib.evaluate.metrics import bootstrap_ci, evaluate, per_class_table
from bloodlib.evaluate.mistakes import misclassified, shared_mistakes
from bloodlib.evaluate.results import (
    Evaluation,
    label_indices,
    read_metrics,
    same_test_cells,
    write_metrics,
)
from bloodlib.evaluate.seeds import (
    seed_group,
    seed_members,
    seed_mistakes,
    seed_mistakes_record,
    seed_spread,
    seed_table,
)

__all__ = [
    "Evaluation",
    "PairedComparison",
    "bootstrap_ci",
    "calibration_bins",
    "comparison_table",
    "evaluate",
    "expected_calibration_error",
    "fit_temperature",
    "label_indices",
    "log_average",
    "logits_from_proba",
    "misclassified",
    "leader_and_runner_up",
    "paired_comparison",
    "per_class_table",
    "read_metrics",
    "reliability_table",
    "same_test_cells",
    "seed_group",
    "seed_members",
    "seed_mistakes",
    "seed_mistakes_record",
    "seed_spread",
    "seed_table",
    "shared_mistakes",
    "softmax",
    "tta_gains",
    "write_metrics",
]
