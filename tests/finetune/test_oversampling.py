"""``TrainConfig.category_weights``: extra passes over the categories a retrain should focus on."""

from __future__ import annotations

from collections import Counter

import pytest
from pydantic import ValidationError

from finetune.training import TrainConfig, _oversampled

CATEGORIES = ["REFUND"] * 100 + ["ACCOUNT"] * 100 + [None] * 10


def test_weights_repeat_a_category_and_leave_the_others() -> None:
    config = TrainConfig(category_weights={"REFUND": 3.0})
    out = _oversampled(list(range(len(CATEGORIES))), CATEGORIES, config)
    counts = Counter(CATEGORIES[i] for i in out)
    assert counts == {"REFUND": 300, "ACCOUNT": 100, None: 10}
    assert all(out.count(i) == 3 for i in range(100))


def test_fractional_weights_repeat_a_seeded_share() -> None:
    config = TrainConfig(category_weights={"REFUND": 1.5})
    first = _oversampled(list(range(len(CATEGORIES))), CATEGORIES, config)
    assert first == _oversampled(list(range(len(CATEGORIES))), CATEGORIES, config)
    refunds = sum(1 for i in first if CATEGORIES[i] == "REFUND")
    assert 130 <= refunds <= 170


def test_only_the_indices_given_are_repeated() -> None:
    # The validation split happens before: held-out indices are not passed in, so never trained on.
    config = TrainConfig(category_weights={"REFUND": 2.0})
    out = _oversampled([0, 1, 150], CATEGORIES, config)
    assert out == [0, 0, 1, 1, 150]


def test_unknown_categories_and_negative_weights_are_refused() -> None:
    with pytest.raises(ValueError, match="no training examples: SHIPPING"):
        _oversampled([0, 1], CATEGORIES, TrainConfig(category_weights={"SHIPPING": 2.0}))
    with pytest.raises(ValidationError):
        TrainConfig(category_weights={"REFUND": -1.0})


def test_unset_weights_keep_existing_checkpoint_fingerprints() -> None:
    assert TrainConfig().fingerprint() == TrainConfig(category_weights={}).fingerprint()
    assert TrainConfig().fingerprint() != TrainConfig(category_weights={"REFUND": 2.0}).fingerprint()
