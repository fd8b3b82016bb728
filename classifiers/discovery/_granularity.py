"""How many categories a set of queries holds, estimated without labels.

Spectral eigengap: on a k-nearest-neighbour graph of the queries, a partition into c groups with
few edges between them shows as c small eigenvalues of the normalised Laplacian followed by a
jump (von Luxburg, "A tutorial on spectral clustering", 2007, section 8.3). Intents overlap, so
the jump is soft and its position moves with the graph's neighbour count; the estimate is the
median of the largest jump's position over several neighbour counts (8, 10, 12, 15), which kept it
within 15 % of the true number on Banking77 and HWU64 where a single graph strayed by 50 % (see
``evals/README.md``, "Category discovery").

Why not the alternatives measured beside it: silhouette, Calinski-Harabasz and Davies-Bouldin
rise or fall monotonically with the number of clusters on these sets; modularity peaks at a
third of the true number (its resolution limit); resampling stability and prediction strength
were too noisy to pick from on 3,000-10,000 queries; HDBSCAN's own count moves with its minimum
cluster size (42 of 64 intents on HWU64, 72 of 77 on Banking77, at the same setting).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["GranularityEstimate", "estimate_categories", "nearest_neighbours"]

NEIGHBOUR_COUNTS = (8, 10, 12, 15)
DENSE_BELOW = 600  # nodes: a dense eigen-solve is quicker and exact below this


@dataclass(frozen=True)
class GranularityEstimate:
    categories: int
    """The median of ``votes``: the estimated number of categories."""
    votes: tuple[int, ...]
    """The largest eigengap's position for each neighbour count."""


def nearest_neighbours(points: np.ndarray, count: int, block: int = 2048) -> np.ndarray:
    """Indices of each row's ``count`` most similar other rows, most similar first (blockwise)."""
    n = len(points)
    count = min(count, n - 1)
    out = np.empty((n, count), dtype=np.int64)
    for start in range(0, n, block):
        sims = points[start : start + block] @ points.T
        rows = np.arange(len(sims))
        sims[rows, start + rows] = -np.inf  # not its own neighbour
        top = np.argpartition(-sims, count - 1, axis=1)[:, :count]
        order = np.argsort(-np.take_along_axis(sims, top, axis=1), axis=1, kind="stable")
        out[start : start + block] = np.take_along_axis(top, order, axis=1)
    return out


def knn_graph(neighbours: np.ndarray):  # -> scipy.sparse.csr_matrix
    """Symmetric 0/1 adjacency from :func:`nearest_neighbours`: an edge where either row lists the other."""
    import scipy.sparse as sp

    n, count = neighbours.shape
    adjacency = sp.csr_matrix((np.ones(neighbours.size), (np.repeat(np.arange(n), count), neighbours.ravel())), shape=(n, n))
    return ((adjacency + adjacency.T) > 0).astype(np.float64)


def _smallest_eigenvalues(neighbours: np.ndarray, count: int, seed: int) -> np.ndarray:
    from scipy.sparse.csgraph import laplacian

    lap = laplacian(knn_graph(neighbours), normed=True)
    n = len(neighbours)
    if n <= DENSE_BELOW:
        return np.linalg.eigvalsh(lap.toarray())[:count]
    from scipy.sparse.linalg import eigsh

    start = np.random.default_rng(seed).uniform(size=n)  # ARPACK's start vector, fixed for repeatability
    values = eigsh(lap, k=count, sigma=-0.01, which="LM", return_eigenvectors=False, v0=start)
    return np.sort(values)


def estimate_categories(points: np.ndarray, *, low: int = 2, high: int = 200, seed: int = 0) -> GranularityEstimate:
    """The number of categories in ``points`` (normalised rows), between ``low`` and ``high``."""
    n = len(points)
    high = max(low, min(high, n - 3))
    votes = []
    ranked = nearest_neighbours(points, max(NEIGHBOUR_COUNTS))  # one similarity pass serves every graph
    for neighbours in NEIGHBOUR_COUNTS:
        values = _smallest_eigenvalues(ranked[:, :neighbours], min(high + 2, n - 2), seed)
        gaps = np.diff(values)[low - 1 : high]  # gaps[i]: eigenvalue (low + i + 1) minus (low + i), 1-based
        votes.append(int(np.argmax(gaps)) + low if len(gaps) else low)
    return GranularityEstimate(categories=int(round(float(np.median(votes)))), votes=tuple(votes))
