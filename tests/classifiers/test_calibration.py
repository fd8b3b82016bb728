"""Threshold selection on hand-made scores (no model needed)."""

import numpy as np
import pytest

from classifiers._calibration import best_accuracy_threshold, share_threshold


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
    threshold, _ = best_accuracy_threshold(confidence, ~out_of_scope, out_of_scope)
    local = confidence >= threshold
    assert local.all() or not local.any()


@pytest.mark.parametrize("share", [0.0, 0.25, 0.5, 0.8, 1.0])
def test_share_threshold_keeps_the_target_share_local(share: float) -> None:
    confidence = np.random.default_rng(0).random(200)
    threshold = share_threshold(confidence, share)
    assert np.mean(confidence >= threshold) == pytest.approx(share, abs=0.005)
