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

__all__ = ["GranularityEstimate", "estimate_categories"]

NEIGHBOUR_COUNTS = (8, 10, 12, 15)
DENSE_BELOW = 600  # nodes: a dense eigen-solve is quicker and exact below this


@dataclass(frozen=True)
class GranularityEstimate:
    categories: int
    """The median of ``votes``: the estimated number of categories."""
    votes: tuple[int, ...]
    """The largest eigengap's position for each neighbour count."""


def knn_graph(points: np.ndarray, neighbours: int, block: int = 2048):  # -> scipy.sparse.csr_matrix
    """Symmetric 0/1 adjacency: an edge where either point is among the other's nearest neighbours."""
    import scipy.sparse as sp

    n = len(points)
    neighbours = min(neighbours, n - 1)
    cols = np.empty((n, neighbours), dtype=np.int64)
    for start in range(0, n, block):
        sims = points[start : start + block] @ points.T
        rows = np.arange(len(sims))
        sims[rows, start + rows] = -np.inf  # not its own neighbour
        cols[start : start + block] = np.argpartition(-sims, neighbours - 1, axis=1)[:, :neighbours]
    adjacency = sp.csr_matrix((np.ones(cols.size), (np.repeat(np.arange(n), neighbours), cols.ravel())), shape=(n, n))
    return ((adjacency + adjacency.T) > 0).astype(np.float64)


def _smallest_eigenvalues(points: np.ndarray, neighbours: int, count: int, seed: int) -> np.ndarray:
    from scipy.sparse.csgraph import laplacian

    lap = laplacian(knn_graph(points, neighbours), normed=True)
    if len(points) <= DENSE_BELOW:
        return np.linalg.eigvalsh(lap.toarray())[:count]
    from scipy.sparse.linalg import eigsh

    start = np.random.default_rng(seed).uniform(size=len(points))  # ARPACK's start vector, fixed for repeatability
    values = eigsh(lap, k=count, sigma=-0.01, which="LM", return_eigenvectors=False, v0=start)
    return np.sort(values)


def estimate_categories(points: np.ndarray, *, low: int = 2, high: int = 200, seed: int = 0) -> GranularityEstimate:
    """The number of categories in ``points`` (normalised rows), between ``low`` and ``high``."""
    n = len(points)
    high = max(low, min(high, n - 3))
    votes = []
    for neighbours in NEIGHBOUR_COUNTS:
        values = _smallest_eigenvalues(points, neighbours, min(high + 2, n - 2), seed)
        gaps = np.diff(values)[low - 1 : high]  # gaps[i]: eigenvalue (low + i + 1) minus (low + i), 1-based
        votes.append(int(np.argmax(gaps)) + low if len(gaps) else low)
    return GranularityEstimate(categories=int(round(float(np.median(votes)))), votes=tuple(votes))
