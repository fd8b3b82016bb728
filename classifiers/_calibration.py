"""Choosing the edge threshold (and the confidence mix) from held-out data.

A query is local when its confidence is at least the threshold; everything below goes to the
cloud tier. Thresholds sit halfway between adjacent observed scores so that a score equal to
a calibration example's does not flip on float noise. Three objectives: best routed accuracy,
a share of traffic kept local, or a share of out-of-scope examples sent to the edge (recall).
"""

from __future__ import annotations

from typing import NamedTuple

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


class _Splits(NamedTuple):
    """Counts for every split point of the sorted scores; split i sends ``scores[:i]`` to the edge."""

    scores: np.ndarray
    edge_out_of_scope: np.ndarray  # out-of-scope examples sent to the edge, (n + 1,)
    local_right: np.ndarray  # in-scope examples kept local with the right label, (n + 1,)
    valid: np.ndarray  # only split between distinct scores, so that ties never split

    def threshold(self, split: int) -> float:
        """The confidence threshold that realises ``split``: halfway between its neighbours."""
        if split == 0:
            return 0.0
        if split == len(self.scores):
            return float(np.nextafter(self.scores[-1], np.inf))
        return float((self.scores[split - 1] + self.scores[split]) / 2)


def _splits(confidence: np.ndarray, label_correct: np.ndarray, out_of_scope: np.ndarray) -> _Splits:
    """Sort once, then cumulative counts for every split point: O(n log n)."""
    order = np.argsort(confidence, kind="stable")
    scores = confidence[order]
    edge_out = np.concatenate([[0], np.cumsum(out_of_scope[order])])
    local_right = (label_correct & ~out_of_scope)[order]
    local_right = np.concatenate([np.cumsum(local_right[::-1])[::-1], [0]])
    valid = np.concatenate([[True], scores[1:] > scores[:-1], [True]])
    return _Splits(scores, edge_out, local_right, valid)


def best_accuracy_threshold(
    confidence: np.ndarray, label_correct: np.ndarray, out_of_scope: np.ndarray
) -> tuple[float, float]:
    """Threshold maximising routed accuracy, and that accuracy.

    An in-scope example counts as correct when it stays local with the right label, an
    out-of-scope one when it goes to the edge. Ties go to the lowest threshold (more local
    traffic).
    """
    splits = _splits(confidence, label_correct, out_of_scope)
    correct = np.where(splits.valid, splits.edge_out_of_scope + splits.local_right, -1)
    best = int(np.argmax(correct))
    return splits.threshold(best), float(correct[best] / len(confidence))


def edge_recall_threshold(
    confidence: np.ndarray, label_correct: np.ndarray, out_of_scope: np.ndarray, target_recall: float
) -> tuple[float, float]:
    """Threshold sending at least ``target_recall`` of the out-of-scope examples to the edge.

    Of the thresholds that do, it is the one keeping the most in-scope examples local with the
    right label, which is the lowest (recall only grows with the threshold). Returns it and the
    in-scope accuracy it gives. Sending everything to the edge always reaches the target, so
    there is always an answer; there must be out-of-scope examples.
    """
    n_out = int(out_of_scope.sum())
    if n_out == 0:
        raise ValueError("edge recall needs out-of-scope examples")
    splits = _splits(confidence, label_correct, out_of_scope)
    # The tolerance makes 0.8 of 240 examples count as reached at exactly 192.
    reached = splits.valid & (splits.edge_out_of_scope >= target_recall * n_out - 1e-9)
    first = int(np.argmax(reached))
    n_in = len(confidence) - n_out
    return splits.threshold(first), float(splits.local_right[first] / n_in) if n_in else 1.0


def share_threshold(confidence: np.ndarray, target_local_share: float) -> float:
    """Threshold that keeps about ``target_local_share`` of the given traffic local."""
    n_local = int(round(target_local_share * len(confidence)))
    if n_local >= len(confidence):
        return 0.0
    ordered = np.sort(confidence)[::-1]
    if n_local == 0:
        return float(np.nextafter(ordered[0], np.inf))
    return float((ordered[n_local - 1] + ordered[n_local]) / 2)
