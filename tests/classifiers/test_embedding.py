"""EmbeddingClassifier's estimator contract on a small Bitext slice (frozen encoder)."""

from __future__ import annotations

import numpy as np
import pytest

from classifiers import EmbeddingClassifier, Prediction
from router.errors import ConfigError

pytestmark = pytest.mark.slow


def test_classes_are_sorted_and_order_proba_columns(frozen, bitext) -> None:
    assert list(frozen.classes_) == sorted(set(bitext.train.labels))
    texts = bitext.holdout.texts[:10]
    proba = frozen.predict_proba(texts)
    assert proba.shape == (10, len(frozen.classes_))
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=1e-5)
    assert list(frozen.classes_[proba.argmax(axis=1)]) == [frozen.classify(t).label for t in texts]


@pytest.fixture(scope="module")
def calibrated(frozen, bitext, tmp_path_factory):
    """A copy of ``frozen`` with exemplars on, calibrated on the holdout (24 out-of-scope exemplars)."""
    model = EmbeddingClassifier.load(frozen.save(tmp_path_factory.mktemp("calibrated") / "copy"))
    return model.set_params(exemplar_weight=None).calibrate(bitext.holdout.texts, bitext.holdout.labels)


def test_head_inside_the_onnx_graph_matches_the_head_in_numpy(calibrated, bitext) -> None:
    """classify runs pooling, logits and both cosines in ORT; recompute them from the arrays."""
    model = calibrated
    texts = bitext.holdout.texts[:20] + bitext.unseen_out_of_scope[:10]
    embeddings = model.encoder_.encode(texts)
    head = model.head_
    assert len(head.exemplars) == 24
    logits = embeddings @ head.coef.T + head.intercept
    proba = np.exp(logits - logits.max(axis=1, keepdims=True))
    proba /= proba.sum(axis=1, keepdims=True)
    cosine = (embeddings @ head.memory.T).max(axis=1)
    exemplar_cosine = (embeddings @ head.exemplars.T).max(axis=1)
    w, e = model.proba_weight_, model.exemplar_weight_
    expected = np.clip(w * proba.max(axis=1) + (1 - w) * cosine - e * exemplar_cosine, 0.0, 1.0)
    predictions = [model.classify(t) for t in texts]
    np.testing.assert_allclose([p.confidence for p in predictions], expected, atol=1e-5)
    assert [p.label for p in predictions] == list(model.classes_[proba.argmax(axis=1)])
    np.testing.assert_allclose(model.predict_proba(texts), proba, atol=1e-5)
    assert len(set(np.round(cosine, 4))) > 10 and len(set(np.round(exemplar_cosine, 4))) > 10


def test_classify_embedding_is_classify_without_the_encoder(calibrated, bitext) -> None:
    from hybrid_common.errors import ConfigError

    for text in bitext.holdout.texts[:5] + bitext.unseen_out_of_scope[:5]:
        direct = calibrated.classify(text)
        again = calibrated.classify_embedding(direct.embedding * 3.0)  # re-normalised: the scale does not matter
        assert (again.category, again.label) == (direct.category, direct.label)
        assert again.confidence == pytest.approx(direct.confidence, abs=1e-5)
    with pytest.raises(ConfigError):
        calibrated.classify_embedding(np.zeros(7))
    with pytest.raises(ConfigError):
        calibrated.classify_embedding(np.full(calibrated.head_.dim, np.nan))


def test_predict_is_accurate_on_in_scope_holdout(frozen, bitext) -> None:
    pairs = [(t, c) for t, c in zip(bitext.holdout.texts, bitext.holdout.labels, strict=True) if c is not None]
    predicted = frozen.predict([t for t, _ in pairs])
    assert len(predicted) == len(pairs)
    assert np.mean([p == c for p, (_, c) in zip(predicted, pairs, strict=True)]) >= 0.9


def test_uncalibrated_threshold_never_sends_to_the_edge(frozen, bitext) -> None:
    assert frozen.threshold_ == 0.0
    assert None not in frozen.predict(bitext.holdout.texts)


def test_classify_returns_a_frozen_prediction(frozen) -> None:
    prediction = frozen.classify("I want to cancel the order I placed yesterday")
    assert isinstance(prediction, Prediction)
    assert prediction.category == prediction.label == "cancel_order"
    assert 0.0 <= prediction.confidence <= 1.0
    with pytest.raises(AttributeError):
        prediction.category = None  # type: ignore[misc]


def test_none_labels_are_out_of_scope_not_a_class(bitext) -> None:
    texts = bitext.train.texts[::4] + bitext.holdout.texts[-24:]
    labels = bitext.train.labels[::4] + [None] * 24
    model = EmbeddingClassifier(fine_tune_epochs=0, quantize=False, progress=False).fit(texts, labels)
    assert list(model.classes_) == sorted({label for label in labels if label is not None})
    assert model.predict_proba(texts[:3]).shape == (3, len(model.classes_))


def _routed_accuracy(model: EmbeddingClassifier, texts: list[str], labels: list[str | None]) -> float:
    return float(np.mean([p == c for p, c in zip(model.predict(texts), labels, strict=True)]))


def test_calibrate_accuracy_objective_sends_out_of_scope_to_the_edge(frozen, bitext, tmp_path) -> None:
    model = EmbeddingClassifier.load(frozen.save(tmp_path / "copy"))
    texts, labels = bitext.holdout.texts, bitext.holdout.labels
    before = _routed_accuracy(model, texts, labels)
    model.calibrate(texts, labels)
    assert 0.0 < model.threshold_ <= 1.0
    assert model.proba_weight_ in (0.0, 0.25, 0.5, 0.75, 1.0)
    assert model.exemplar_weight_ == 0.0 and len(model.head_.exemplars) == 0  # exemplars are opt-in
    after = _routed_accuracy(model, texts, labels)
    assert after == pytest.approx(model.calibration_accuracy_)
    assert after > before
    out_of_scope = [p for p, c in zip(model.predict(texts), labels, strict=True) if c is None]
    assert sum(p is None for p in out_of_scope) >= len(out_of_scope) / 2


def test_calibration_exemplars_catch_more_of_the_same_out_of_scope_intents(
    frozen, calibrated, bitext, tmp_path
) -> None:
    """Unseen queries of the calibration's out-of-scope intents go to the edge more often with exemplars."""
    assert calibrated.exemplar_weight_ in (0.0, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0)
    # Calibration scored each exemplar against the others only; afterwards each also matches itself.
    assert calibrated.score(bitext.holdout.texts, bitext.holdout.labels) >= calibrated.calibration_accuracy_ - 1e-9
    without = EmbeddingClassifier.load(frozen.save(tmp_path / "copy")).set_params(exemplar_weight=0.0)
    without.calibrate(bitext.holdout.texts, bitext.holdout.labels)
    assert without.exemplar_weight_ == 0.0 and len(without.head_.exemplars) == 0
    unseen = bitext.unseen_out_of_scope
    recall_with = np.mean([p is None for p in calibrated.predict(unseen)])
    recall_without = np.mean([p is None for p in without.predict(unseen)])
    assert recall_with > recall_without, (recall_with, recall_without)
    in_scope = [(t, c) for t, c in zip(bitext.holdout.texts, bitext.holdout.labels, strict=True) if c is not None]
    kept = np.mean([p is not None for p in calibrated.predict([t for t, _ in in_scope])])
    assert kept >= 0.9


def test_recalibration_replaces_the_calibration_exemplars(calibrated, bitext, tmp_path) -> None:
    model = EmbeddingClassifier.load(calibrated.save(tmp_path / "copy"))
    np.testing.assert_array_equal(model.head_.exemplars, calibrated.head_.exemplars)
    assert model.exemplar_weight_ == calibrated.exemplar_weight_
    assert model.predict(bitext.unseen_out_of_scope) == calibrated.predict(bitext.unseen_out_of_scope)
    model.calibrate(bitext.holdout.texts[:-12], bitext.holdout.labels[:-12])
    assert len(model.head_.exemplars) == 12
    model.calibrate(bitext.holdout.texts[:72], bitext.holdout.labels[:72])  # in scope only
    assert len(model.head_.exemplars) == 0 and model.threshold_ == 0.0


def test_fit_keeps_out_of_scope_examples_as_exemplars_only_when_asked(bitext) -> None:
    texts = bitext.train.texts[::4] + bitext.holdout.texts[-24:]
    labels = bitext.train.labels[::4] + [None] * 24
    model = EmbeddingClassifier(fine_tune_epochs=0, exemplar_weight=None, progress=False).fit(texts, labels)
    assert model.head_.fit_exemplars.shape == (24, model.head_.dim)
    np.testing.assert_allclose(model.head_.fit_exemplars, model.encoder_.encode(texts[-24:]), atol=1e-6)
    assert model.exemplar_weight_ == 1.0
    # Fit exemplars survive calibration, which adds its own next to them.
    model.calibrate(bitext.holdout.texts[:72] + bitext.unseen_out_of_scope[:6], bitext.holdout.labels[:72] + [None] * 6)
    assert len(model.head_.fit_exemplars) == 24 and len(model.head_.exemplars) == 30
    unweighted = EmbeddingClassifier(fine_tune_epochs=0, progress=False).fit(texts, labels)
    assert len(unweighted.head_.exemplars) == 0 and unweighted.exemplar_weight_ == 0.0


def test_calibrate_local_share_objective(frozen, bitext, tmp_path) -> None:
    model = EmbeddingClassifier.load(frozen.save(tmp_path / "copy"))
    model.calibrate(bitext.holdout.texts, bitext.holdout.labels, objective="local_share", target_local_share=0.75)
    local = [p is not None for p in model.predict(bitext.holdout.texts)]
    assert np.mean(local) == pytest.approx(0.75, abs=0.02)


def _in_scope_accuracy(model: EmbeddingClassifier, texts: list[str], labels: list[str | None]) -> float:
    pairs = [(p, c) for p, c in zip(model.predict(texts), labels, strict=True) if c is not None]
    return float(np.mean([p == c for p, c in pairs]))


@pytest.mark.parametrize("exemplar_weight", [0.0, None])
def test_calibrate_edge_recall_objective_meets_its_target(frozen, bitext, tmp_path, exemplar_weight) -> None:
    texts, labels = bitext.holdout.texts, bitext.holdout.labels
    in_scope_accuracy = {}
    for target in (0.5, 0.95):
        model = EmbeddingClassifier.load(frozen.save(tmp_path / f"copy{target}")).set_params(
            exemplar_weight=exemplar_weight
        )
        model.calibrate(texts, labels, objective="edge_recall", target_edge_recall=target)
        assert model.calibration_edge_recall_ >= target
        # Served exemplars also match themselves, so recall on these very texts can only be higher.
        recall = np.mean([p is None for p, c in zip(model.predict(texts), labels, strict=True) if c is None])
        assert recall >= target
        if exemplar_weight == 0.0:
            assert recall == pytest.approx(model.calibration_edge_recall_)
            assert model.score(texts, labels) == pytest.approx(model.calibration_accuracy_)
        in_scope_accuracy[target] = _in_scope_accuracy(model, texts, labels)
    if exemplar_weight == 0.0:
        # Each target keeps the most in-scope queries it can, and the looser target can keep more.
        assert in_scope_accuracy[0.5] >= in_scope_accuracy[0.95]
        assert in_scope_accuracy[0.5] > 0.9


@pytest.mark.parametrize(
    ("kwargs", "labels_fn"),
    [
        ({"objective": "local_share"}, None),
        ({"objective": "accuracy", "target_local_share": 0.5}, None),
        ({"objective": "edge_recall"}, None),
        ({"objective": "edge_recall", "target_edge_recall": 1.5}, None),
        ({"objective": "accuracy", "target_edge_recall": 0.8}, None),
        ({"objective": "edge_recall", "target_edge_recall": 0.8}, lambda labels: [c or "track_order" for c in labels]),
        ({"objective": "latency"}, None),
        ({}, lambda labels: ["not_a_class"] + labels[1:]),
    ],
)
def test_calibrate_rejects_bad_arguments(frozen, bitext, kwargs, labels_fn) -> None:
    # Validation happens before any state changes, so the shared fixture stays untouched.
    labels = bitext.holdout.labels if labels_fn is None else labels_fn(bitext.holdout.labels)
    with pytest.raises(ConfigError):
        frozen.calibrate(bitext.holdout.texts, labels, **kwargs)


def test_user_threshold_is_used_until_calibration(bitext) -> None:
    model = EmbeddingClassifier(fine_tune_epochs=0, quantize=False, threshold=1.0, progress=False)
    model.fit(bitext.train.texts[::3], bitext.train.labels[::3])
    assert model.threshold_ == 1.0
    assert model.predict(bitext.holdout.texts[:5]) == [None] * 5
    assert model.classify(bitext.holdout.texts[0]).label in model.classes_
