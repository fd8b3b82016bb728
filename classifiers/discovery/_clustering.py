"""Cluster query embeddings without being told how many clusters there are.

The method, and why (measured on Banking77 and HWU64 with all-MiniLM-L6-v2; which setting was
chosen on which set is in ``evals/README.md``, "Category discovery"):

1. **Features**: the normalised query embedding, joined (when the texts are given) with a
   100-dimension LSA of the queries' word and bigram TF-IDF at ``lexical_weight`` (0.3). Intents
   are often named by one word ("alarm", "refund") that a small encoder under-weights.
2. **Reduction** (only above ``max_points``): mini-batch k-means into ``max_points`` micro-clusters,
   whose centroids stand for their members. Every later step is quadratic in the points it sees,
   so 100,000 queries cost what 4,000 do.
3. **How many categories** (:mod:`._granularity`): the spectral eigengap of k-nearest-neighbour
   graphs, unless ``categories`` is given; ``granularity`` scales it (0.5: half as many, coarser).
4. **Neighbour smoothing**: each point is replaced by the normalised mean of itself and its
   ``smoothing_neighbors`` nearest neighbours. Short queries are noisy points; averaging over
   their neighbourhood pulls paraphrases together.
5. **Partition**: Ward linkage on the smoothed points cut at that number, refined by k-means
   started from the Ward centroids (Ward's early merges are never undone; the refinement moves
   the points they misplaced).
6. **Edge traffic**: HDBSCAN on the smoothed points marks the points in no dense region of at
   least ``min_cluster_share`` of the traffic (*noise*). A noise point stays in its cluster only
   when it is as close to the cluster's centroid as the cluster's dense members are (their
   ``assign_quantile``); the rest are unassigned (edge traffic), as are clusters smaller than
   ``min_cluster_share``.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np

from ._granularity import GranularityEstimate, estimate_categories, nearest_neighbours

__all__ = ["ClusterResult", "cluster_embeddings", "normalise"]

NOISE = -1


@dataclass(frozen=True)
class ClusterResult:
    """Cluster ids per input row (``-1``: unassigned), and what the method decided."""

    labels: np.ndarray
    """Final cluster id per row; ``-1`` where a noise point was not close enough to any cluster."""
    nearest: np.ndarray
    """Cluster id per row with every noise point given its nearest cluster (for scoring)."""
    centroids: np.ndarray
    """Normalised centroid per cluster id (of the raw embeddings of its members)."""
    noise_share: float
    """Share of rows HDBSCAN left as noise (before nearest-cluster assignment)."""
    reduced_to: int | None
    """Micro-clusters used when the input exceeded ``max_points``, else None."""
    estimate: GranularityEstimate | None
    """The label-free estimate of the number of categories (None when ``categories`` was given)."""

    @property
    def k(self) -> int:
        return int(self.centroids.shape[0])


def normalise(matrix: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    return (matrix / np.maximum(norms, 1e-12)).astype(np.float32, copy=False)


def _smoothed(points: np.ndarray, neighbours: int) -> np.ndarray:
    """Each row replaced by the normalised mean of itself and its nearest neighbours."""
    if neighbours <= 0 or len(points) <= neighbours + 1:
        return points
    ranked = nearest_neighbours(points, neighbours)
    return normalise((points + points[ranked].sum(axis=1)) / (neighbours + 1))


def _reduce(points: np.ndarray, max_points: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(centroids, assignment): mini-batch k-means into ``max_points`` micro-clusters (empty ones dropped)."""
    from sklearn.cluster import MiniBatchKMeans

    km = MiniBatchKMeans(n_clusters=max_points, batch_size=4096, n_init=1, max_iter=20, random_state=seed)
    assignment = km.fit_predict(points)
    keep = np.bincount(assignment, minlength=max_points) > 0
    remap = -np.ones(max_points, dtype=np.int64)
    remap[keep] = np.arange(int(keep.sum()))
    return normalise(km.cluster_centers_[keep]), remap[assignment]


def lexical_features(texts: list[str], dimensions: int = 100, seed: int = 0) -> np.ndarray | None:
    """Normalised LSA of word and bigram TF-IDF (None when the texts share too few words)."""
    from sklearn.decomposition import TruncatedSVD
    from sklearn.feature_extraction.text import TfidfVectorizer

    try:
        tfidf = TfidfVectorizer(sublinear_tf=True, min_df=2, ngram_range=(1, 2)).fit_transform(texts)
    except ValueError:  # empty vocabulary
        return None
    dimensions = min(dimensions, tfidf.shape[1] - 1, len(texts) - 1)
    if dimensions < 2:
        return None
    with warnings.catch_warnings():  # a few distinct words leave zero-variance components: harmless here
        warnings.simplefilter("ignore", RuntimeWarning)
        return normalise(TruncatedSVD(dimensions, random_state=seed).fit_transform(tfidf))


def cluster_embeddings(
    embeddings: np.ndarray,
    *,
    texts: list[str] | None = None,
    categories: int | None = None,
    granularity: float = 1.0,
    min_cluster_share: float = 0.005,
    min_cluster_size: int = 8,
    smoothing_neighbors: int = 10,
    min_samples: int = 5,
    max_points: int = 4000,
    assign_quantile: float = 0.05,
    lexical_weight: float = 0.3,
    max_categories: int = 200,
    seed: int = 0,
) -> ClusterResult:
    """Cluster ``embeddings`` (rows; ``texts`` their queries, optional); see the module docstring.

    ``categories`` fixes the number of clusters; otherwise it is estimated and multiplied by
    ``granularity`` (above 1: finer, purer categories each with a smaller share; below 1: coarser).
    """
    from sklearn.cluster import HDBSCAN

    points = normalise(np.asarray(embeddings, dtype=np.float32))
    n = len(points)
    if n < 2 * min_cluster_size:
        raise ValueError(f"need at least {2 * min_cluster_size} queries to look for categories, got {n}")
    if texts is not None and len(texts) != n:
        raise ValueError(f"got {len(texts)} texts for {n} embeddings")
    if granularity <= 0:
        raise ValueError(f"granularity must be positive, got {granularity}")
    features = points
    lexical = lexical_features(texts, seed=seed) if texts is not None and lexical_weight > 0 else None
    if lexical is not None:
        features = normalise(np.hstack([points, lexical_weight * lexical]))
    reduced_to = None
    weights = np.ones(n)
    if n > max_points:
        nodes, assignment = _reduce(features, max_points, seed)
        reduced_to = len(nodes)
        weights = np.bincount(assignment, minlength=len(nodes)).astype(np.float64)
    else:
        nodes, assignment = features, np.arange(n)
    # The smallest cluster in nodes: a share of the traffic, converted to nodes of average weight.
    min_nodes = max(min_cluster_size if reduced_to is None else 3, round(min_cluster_share * len(nodes)))
    estimate = None
    if categories is None:
        estimate = estimate_categories(nodes, high=min(max_categories, max(2, len(nodes) // min_nodes)), seed=seed)
        categories = round(estimate.categories * granularity)
    k = int(min(max(categories, 1), len(nodes) - 1))
    smoothed = _smoothed(nodes, smoothing_neighbors)
    node_labels = _partition(smoothed, k, weights, seed)
    dense = HDBSCAN(min_cluster_size=min_nodes, min_samples=min(min_samples, min_nodes), copy=True).fit_predict(smoothed) >= 0
    if not dense.any():  # one undifferentiated blob: every point is as dense as the rest
        dense[:] = True

    labels = node_labels[assignment]
    space = smoothed[assignment]  # noise is judged in the smoothed space, where the clusters were found
    row_dense = dense[assignment]
    # Clusters smaller than the share are not categories: their rows go to the nearest other cluster.
    sizes = np.bincount(labels, minlength=k)
    keep = sizes >= max(min_cluster_size, min_cluster_share * n)
    if not keep.any():
        keep[np.argmax(sizes)] = True
    kept_ids = np.flatnonzero(keep)
    centres = normalise(np.stack([space[labels == c].mean(axis=0) for c in kept_ids]))
    nearest = np.searchsorted(kept_ids, labels)
    small = ~keep[labels]
    if small.any():
        nearest[small] = (space[small] @ centres.T).argmax(axis=1)
    cos = np.einsum("ij,ij->i", space, centres[nearest])
    final = nearest.copy()
    for c in range(len(kept_ids)):
        mine = nearest == c
        core = mine & row_dense
        floor = np.quantile(cos[core], assign_quantile) if core.any() else -1.0
        final[mine & ~row_dense & (cos < floor)] = NOISE
    final[small] = NOISE
    k = len(kept_ids)
    centroids = normalise(np.stack([points[nearest == c].mean(axis=0) for c in range(k)]))
    return ClusterResult(
        labels=final, nearest=nearest, centroids=centroids, noise_share=float((~row_dense).mean()),
        reduced_to=reduced_to, estimate=estimate,
    )  # fmt: skip


def _partition(points: np.ndarray, k: int, weights: np.ndarray, seed: int) -> np.ndarray:
    """Ward's cut at ``k`` refined by (weighted) k-means from its centroids; ids 0..k-1."""
    from scipy.cluster.hierarchy import fcluster, ward
    from sklearn.cluster import KMeans

    if k <= 1:
        return np.zeros(len(points), dtype=np.int64)
    cut = fcluster(ward(points), k, criterion="maxclust") - 1
    _, cut = np.unique(cut, return_inverse=True)
    start = np.stack([points[cut == c].mean(axis=0) for c in range(cut.max() + 1)])
    refined = KMeans(len(start), init=start, n_init=1, random_state=seed).fit_predict(points, sample_weight=weights)
    _, refined = np.unique(refined, return_inverse=True)
    return refined.astype(np.int64)
