"""Figures: one module per notebook, over a shared style (:mod:`~bloodlib.teach.plots.common`).

Every function returns a :class:`matplotlib.figure.Figure` and never calls ``plt.show()``:
notebooks display it (``bloodlib.teach.notebook.show``), scripts pass it to
:func:`save_figure`. No backend is forced here (notebooks use inline, tests Agg); seaborn
styling is applied per figure, so importing this package leaves matplotlib's settings alone.
:mod:`~bloodlib.teach.plots.data` (01), :mod:`~bloodlib.teach.plots.features` (02),
:mod:`~bloodlib.teach.plots.training` (03), :mod:`~bloodlib.teach.plots.evaluation` and
:mod:`~bloodlib.teach.plots.saliency` (04), :mod:`~bloodlib.teach.plots.lab` (05); the names are re-exported here (``plots.plot_roc``).
"""

from bloodlib.teach.plots.common import overlay, save_figure
from bloodlib.teach.plots.data import (
    plot_class_distribution,
    plot_examples,
    plot_size_colour,
    plot_split,
)
from bloodlib.teach.plots.evaluation import (
    plot_bootstrap,
    plot_comparison,
    plot_confusion,
    plot_confusions,
    plot_misclassified,
    plot_reliability,
    plot_roc,
    plot_seed_spread,
)
from bloodlib.teach.plots.features import (
    Projection,
    plot_accuracy_vs_compute,
    plot_projection,
    project,
)
from bloodlib.teach.plots.lab import (
    plot_confusion_rect,
    plot_coverage,
    plot_entropy,
    plot_lab_statistics,
    plot_predicted_instead,
    plot_remedies,
    plot_shots,
    plot_side_by_side,
)
from bloodlib.teach.plots.saliency import (
    plot_cam_examples,
    plot_cell_prediction,
    plot_saliency_checks,
)
from bloodlib.teach.plots.training import (
    plot_augmentations,
    plot_learning_curves,
    plot_learning_rate,
)

__all__ = [
    "Projection",
    "overlay",
    "plot_accuracy_vs_compute",
    "plot_augmentations",
    "plot_bootstrap",
    "plot_cam_examples",
    "plot_saliency_checks",
    "plot_cell_prediction",
    "plot_class_distribution",
    "plot_comparison",
    "plot_confusion",
    "plot_confusion_rect",
    "plot_confusions",
    "plot_coverage",
    "plot_entropy",
    "plot_examples",
    "plot_lab_statistics",
    "plot_learning_curves",
    "plot_learning_rate",
    "plot_misclassified",
    "plot_predicted_instead",
    "plot_projection",
    "plot_reliability",
    "plot_remedies",
    "plot_roc",
    "plot_seed_spread",
    "plot_shots",
    "plot_side_by_side",
    "plot_size_colour",
    "plot_split",
    "project",
    "save_figure",
]
