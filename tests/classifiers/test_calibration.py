"""Threshold selection on hand-made scores (no model needed)."""

import numpy as np
import pytest

from classifiers._calibration import (
    best_accuracy_threshold,
    edge_recall_threshold,
    leave_one_out_exemplar_cosine,
    share_threshold,
)


def test_accuracy_threshold_separates_out_of_scope_scores() -> None:
    confidence = np.array([0.1, 0.2, 0.3, 0.6, 0.7, 0.9])
    out_of_scope = np.array([True, True, False, False, False, False])
    label_correct = np.array([False, False, False, True, True, True])
    threshold, accuracy = best_accuracy_threshold(confidence, label_correct, out_of_scope)
    # 0.3 is in scope but wrongly labelled: sending it to the edge costs nothing.
    assert 0.2 < threshold <= 0.6
    assert accuracy == pytest.approx(5 / 6)
    local = confidence >= threshold
    assert not local[:2].any() and local[3:].all()


def test_accuracy_threshold_is_zero_without_out_of_scope_examples() -> None:
    confidence = np.array([0.4, 0.5, 0.8])
    threshold, accuracy = best_accuracy_threshold(confidence, np.ones(3, dtype=bool), np.zeros(3, dtype=bool))
    assert threshold == 0.0
    assert accuracy == 1.0


def test_ties_never_split() -> None:
    confidence = np.array([0.5, 0.5, 0.5, 0.5])
    out_of_scope = np.array([True, False, True, False])
    threshold, accuracy = best_accuracy_threshold(confidence, ~out_of_scope, out_of_scope)
    local = confidence >= threshold
    assert local.all() or not local.any()
    assert accuracy == pytest.approx(0.5)  # a split inside the tie would claim more than is possible
    # One score above the tie: every split that keeps the tie whole gets 2 of 3 right, not more.
    confidence = np.array([0.5, 0.5, 0.9])
    threshold, accuracy = best_accuracy_threshold(confidence, np.array([False, True, True]), np.array([True, False, False]))
    assert accuracy == pytest.approx(2 / 3)
    assert (confidence[:2] >= threshold).all() or (confidence[:2] < threshold).all()


def test_edge_recall_threshold_is_the_lowest_that_reaches_the_target() -> None:
    confidence = np.array([0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8])
    out_of_scope = np.array([True, False, True, True, False, True, False, False])
    label_correct = ~out_of_scope
    # 3 of 4 out-of-scope scores (0.1, 0.3, 0.4) lie below 0.45; reaching 4 of 4 costs the 0.5 in-scope one.
    threshold, in_scope_accuracy = edge_recall_threshold(confidence, label_correct, out_of_scope, 0.75)
    assert 0.4 < threshold <= 0.5
    assert in_scope_accuracy == pytest.approx(3 / 4)  # the in-scope 0.2 goes to the edge
    threshold, in_scope_accuracy = edge_recall_threshold(confidence, label_correct, out_of_scope, 1.0)
    assert 0.6 < threshold <= 0.7
    assert in_scope_accuracy == pytest.approx(2 / 4)


@pytest.mark.parametrize("target", [0.3, 0.5, 0.8, 0.95])
def test_edge_recall_threshold_meets_the_target_and_no_lower_split_does(target: float) -> None:
    rng = np.random.default_rng(1)
    out_of_scope = rng.random(300) < 0.25
    confidence = np.where(out_of_scope, rng.normal(0.4, 0.15, 300), rng.normal(0.7, 0.15, 300))
    label_correct = rng.random(300) < 0.9
    threshold, in_scope_accuracy = edge_recall_threshold(confidence, label_correct, out_of_scope, target)
    recall = np.mean(confidence[out_of_scope] < threshold)
    assert recall >= target
    below = np.sort(confidence)[np.sort(confidence) < threshold]
    assert len(below)  # moving the threshold down past the next score loses the target
    assert np.mean(confidence[out_of_scope] < below[-1]) < target
    kept = (confidence >= threshold) & label_correct & ~out_of_scope
    assert in_scope_accuracy == pytest.approx(kept.sum() / (~out_of_scope).sum())


def test_edge_recall_threshold_never_splits_ties() -> None:
    confidence = np.array([0.5, 0.5, 0.9])
    out_of_scope = np.array([True, False, False])
    # The out-of-scope 0.5 cannot go to the edge without its in-scope twin.
    threshold, in_scope_accuracy = edge_recall_threshold(confidence, ~out_of_scope, out_of_scope, 1.0)
    assert 0.5 < threshold <= 0.9
    assert in_scope_accuracy == pytest.approx(1 / 2)
    with pytest.raises(ValueError, match="out-of-scope"):
        edge_recall_threshold(confidence, ~out_of_scope, np.zeros(3, dtype=bool), 0.5)


@pytest.mark.parametrize("share", [0.0, 0.25, 0.5, 0.8, 1.0])
def test_share_threshold_keeps_the_target_share_local(share: float) -> None:
    confidence = np.random.default_rng(0).random(200)
    threshold = share_threshold(confidence, share)
    assert np.mean(confidence >= threshold) == pytest.approx(share, abs=0.005)


def _unit_rows(*angles: float) -> np.ndarray:
    return np.array([[np.cos(a), np.sin(a)] for a in angles], dtype=np.float32)


def test_exemplar_cosine_never_counts_a_row_against_itself() -> None:
    embeddings = _unit_rows(0.0, 0.1, 1.5, 3.0)
    new_exemplars = np.array([True, True, False, False])
    cosine = leave_one_out_exemplar_cosine(embeddings, np.zeros((0, 2), np.float32), new_exemplars)
    # Rows 0 and 1 see only each other; rows 2 and 3 see the nearer of the two.
    np.testing.assert_allclose(cosine, [np.cos(0.1), np.cos(0.1), np.cos(1.4), np.cos(2.9)], rtol=1e-6)


def test_exemplar_cosine_includes_fit_exemplars() -> None:
    embeddings = _unit_rows(0.0, 2.0)
    fit_exemplars = _unit_rows(0.05)
    cosine = leave_one_out_exemplar_cosine(embeddings, fit_exemplars, np.array([True, False]))
    # Row 0 cannot use itself but still sees the fit exemplar, which is also row 1's nearest.
    np.testing.assert_allclose(cosine, [np.cos(0.05), np.cos(1.95)], rtol=1e-6)


def test_exemplar_cosine_is_zero_without_other_exemplars() -> None:
    embeddings = _unit_rows(0.0, 1.0)
    none = np.zeros((0, 2), np.float32)
    np.testing.assert_array_equal(leave_one_out_exemplar_cosine(embeddings, none, np.array([False, False])), [0, 0])
    lone = leave_one_out_exemplar_cosine(embeddings, none, np.array([True, False]))
    np.testing.assert_allclose(lone, [0.0, np.cos(1.0)], rtol=1e-6)
