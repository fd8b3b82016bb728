"""Choosing the edge threshold (and the confidence mix) from held-out data.

A query is local when its confidence is at least the threshold; everything below goes to the
cloud tier. Thresholds sit halfway between adjacent observed scores so that a score equal to
a calibration example's does not flip on float noise.
"""

from __future__ import annotations

import numpy as np

# Mixes of max probability and max training-example cosine tried when out-of-scope examples are given.
PROBA_WEIGHTS = (0.0, 0.25, 0.5, 0.75, 1.0)
# Weights of the max cosine to a known out-of-scope example, tried alongside.
EXEMPLAR_WEIGHTS = (0.0, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0)


def leave_one_out_exemplar_cosine(
    embeddings: np.ndarray, fit_exemplars: np.ndarray, new_exemplar_rows: np.ndarray
) -> np.ndarray:
    """Max cosine of each calibration embedding to the exemplars, never counting itself.

    The exemplars are ``fit_exemplars`` plus the calibration rows ``new_exemplar_rows`` (a
    boolean mask). Without the leave-one-out, a calibration row that becomes an exemplar would
    score a cosine of 1 against itself, and the threshold would be chosen on scores no unseen
    query can get. With no exemplars at all the cosine is 0, as the serving graph's placeholder.
    """
    rows = np.flatnonzero(new_exemplar_rows)
    exemplars = np.vstack([fit_exemplars, embeddings[rows]])
    if len(exemplars) == 0:
        return np.zeros(len(embeddings), dtype=np.float32)
    cosine = embeddings @ exemplars.T
    cosine[rows, len(fit_exemplars) + np.arange(len(rows))] = -np.inf
    best = cosine.max(axis=1)
    best[np.isneginf(best)] = 0.0  # a lone exemplar: for itself there are no others
    return best


def best_accuracy_threshold(
    confidence: np.ndarray, label_correct: np.ndarray, out_of_scope: np.ndarray
) -> tuple[float, float]:
    """Threshold maximising routed accuracy, and that accuracy.

    An in-scope example counts as correct when it stays local with the right label, an
    out-of-scope one when it goes to the edge. Ties go to the lowest threshold (more local
    traffic). O(n log n): sort once, then cumulative counts for every split point.
    """
    order = np.argsort(confidence, kind="stable")
    scores = confidence[order]
    edge_right = np.concatenate([[0], np.cumsum(out_of_scope[order])])  # first i sent to the edge
    local_right = (label_correct & ~out_of_scope)[order]
    local_right = np.concatenate([np.cumsum(local_right[::-1])[::-1], [0]])  # rest kept local
    correct = edge_right + local_right
    # Only split between distinct scores; split i means "scores[:i] go to the edge".
    valid = np.concatenate([[True], scores[1:] > scores[:-1], [True]])
    correct = np.where(valid, correct, -1)
    best = int(np.argmax(correct))
    if best == 0:
        threshold = 0.0
    elif best == len(scores):
        threshold = float(np.nextafter(scores[-1], np.inf))
    else:
        threshold = float((scores[best - 1] + scores[best]) / 2)
    return threshold, float(correct[best] / len(scores))


def share_threshold(confidence: np.ndarray, target_local_share: float) -> float:
    """Threshold that keeps about ``target_local_share`` of the given traffic local."""
    n_local = int(round(target_local_share * len(confidence)))
    if n_local >= len(confidence):
        return 0.0
    ordered = np.sort(confidence)[::-1]
    if n_local == 0:
        return float(np.nextafter(ordered[0], np.inf))
    return float((ordered[n_local - 1] + ordered[n_local]) / 2)
