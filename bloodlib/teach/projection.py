"""A 2-D picture of high-dimensional features: PCA (and optionally t-SNE), coloured by class."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from bloodlib import CLASSES
from bloodlib.core.config import DEFAULT_SEED


@dataclass
class Projection:
    coords: np.ndarray  # (n, 2)
    method: str
    explained: tuple[float, float] | None  # PCA: variance share of the two axes


def project(X: np.ndarray, method: str = "pca", seed: int = DEFAULT_SEED) -> Projection:
    """Project ``X`` (n, d) to 2-D after the SVM's own scaling (signed square root, then
    standardisation), so the picture shows the space the SVM works in.

    ``pca``: the two directions of largest variance (linear, fast, axes interpretable).
    ``tsne``: a non-linear map that keeps neighbours together (slower; distances between
    clusters mean little).
    """
    from sklearn.decomposition import PCA
    from sklearn.preprocessing import StandardScaler

    from bloodlib.models.svm import signed_sqrt

    Z = StandardScaler().fit_transform(signed_sqrt(np.asarray(X, dtype=np.float64)))
    if method == "pca":
        pca = PCA(n_components=2, random_state=seed).fit(Z)
        coords = pca.transform(Z)
        # PCA's sign is arbitrary: fix it so the picture does not flip between versions.
        coords *= np.where(pca.components_.sum(axis=1) < 0, -1.0, 1.0)
        r = pca.explained_variance_ratio_
        return Projection(coords, "pca", (float(r[0]), float(r[1])))
    if method == "tsne":
        from sklearn.manifold import TSNE

        perplexity = float(min(30, max(5, (len(Z) - 1) // 4)))
        coords = TSNE(2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(Z)
        return Projection(coords, "tsne", None)
    raise ValueError(f"method must be 'pca' or 'tsne', not {method!r}")


def plot_projection(
    projection: Projection, labels: Sequence[str], title: str, classes: Sequence[str] = CLASSES
):
    """Scatter of the 2-D projection, one colour per class, with a legend outside."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    labels = np.asarray(labels)
    palette = sns.color_palette("tab10", len(classes))
    with sns.axes_style("whitegrid"):
        fig, ax = plt.subplots(figsize=(7.5, 5.5), layout="constrained")
        for colour, name in zip(palette, classes, strict=True):
            mask = labels == name
            if mask.any():
                ax.scatter(*projection.coords[mask].T, s=18, alpha=0.8, color=colour, label=name)
        if projection.method == "pca" and projection.explained:
            ax.set_xlabel(f"PC 1 ({100 * projection.explained[0]:.1f} % of variance)")
            ax.set_ylabel(f"PC 2 ({100 * projection.explained[1]:.1f} % of variance)")
        else:
            ax.set_xlabel("t-SNE 1")
            ax.set_ylabel("t-SNE 2")
        ax.set_title(title)
        fig.legend(loc="outside right upper")
    return fig
