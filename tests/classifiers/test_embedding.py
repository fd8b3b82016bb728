"""EmbeddingClassifier's estimator contract on a small Bitext slice (frozen encoder)."""

from __future__ import annotations

import numpy as np
import pytest

from classifiers import EmbeddingClassifier, Prediction
from router.errors import ConfigError, NotFittedError

pytestmark = pytest.mark.slow


def test_classes_are_sorted_and_order_proba_columns(frozen, bitext) -> None:
    assert list(frozen.classes_) == sorted(set(bitext.train.labels))
    texts = bitext.holdout.texts[:10]
    proba = frozen.predict_proba(texts)
    assert proba.shape == (10, len(frozen.classes_))
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=1e-5)
    assert list(frozen.classes_[proba.argmax(axis=1)]) == [frozen.classify(t).label for t in texts]


def test_head_inside_the_onnx_graph_matches_the_head_in_numpy(frozen, bitext) -> None:
    """classify runs pooling, logits and memory cosine in ORT; recompute them from the arrays."""
    texts = bitext.holdout.texts[:20]
    embeddings = frozen.encoder_.encode(texts)
    head = frozen.head_
    logits = embeddings @ head.coef.T + head.intercept
    proba = np.exp(logits - logits.max(axis=1, keepdims=True))
    proba /= proba.sum(axis=1, keepdims=True)
    cosine = (embeddings @ head.memory.T).max(axis=1)
    weight = frozen.proba_weight_
    expected = np.clip(weight * proba.max(axis=1) + (1 - weight) * cosine, 0.0, 1.0)
    predictions = [frozen.classify(t) for t in texts]
    np.testing.assert_allclose([p.confidence for p in predictions], expected, atol=1e-5)
    assert [p.label for p in predictions] == list(frozen.classes_[proba.argmax(axis=1)])
    np.testing.assert_allclose(frozen.predict_proba(texts), proba, atol=1e-5)
    assert len(set(np.round(cosine, 4))) > 10


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
    after = _routed_accuracy(model, texts, labels)
    assert after == pytest.approx(model.calibration_accuracy_)
    assert after > before
    out_of_scope = [p for p, c in zip(model.predict(texts), labels, strict=True) if c is None]
    assert sum(p is None for p in out_of_scope) >= len(out_of_scope) / 2


def test_calibrate_local_share_objective(frozen, bitext, tmp_path) -> None:
    model = EmbeddingClassifier.load(frozen.save(tmp_path / "copy"))
    model.calibrate(bitext.holdout.texts, bitext.holdout.labels, objective="local_share", target_local_share=0.75)
    local = [p is not None for p in model.predict(bitext.holdout.texts)]
    assert np.mean(local) == pytest.approx(0.75, abs=0.02)


@pytest.mark.parametrize(
    ("kwargs", "labels_fn"),
    [
        ({"objective": "local_share"}, None),
        ({"objective": "accuracy", "target_local_share": 0.5}, None),
        ({"objective": "latency"}, None),
        ({}, lambda labels: ["not_a_class"] + labels[1:]),
    ],
)
def test_calibrate_rejects_bad_arguments(frozen, bitext, kwargs, labels_fn) -> None:
    # Validation happens before any state changes, so the shared fixture stays untouched.
    labels = bitext.holdout.labels if labels_fn is None else labels_fn(bitext.holdout.labels)
    with pytest.raises(ConfigError):
        frozen.calibrate(bitext.holdout.texts, labels, **kwargs)


def test_clone_and_params_follow_scikit_learn() -> None:
    from sklearn.base import clone, is_classifier

    model = EmbeddingClassifier(C=3.0, fine_tune_epochs=0, threshold=0.4)
    params = model.get_params()
    assert params["C"] == 3.0 and params["threshold"] == 0.4 and params["encoder"] is None
    copy = clone(model)
    assert copy is not model and copy.get_params() == params
    assert copy.set_params(C=1.0) is copy and copy.C == 1.0
    assert is_classifier(model)
    with pytest.raises(ConfigError):
        model.set_params(not_a_param=1)
    assert "C=3.0" in repr(model)


def test_user_threshold_is_used_until_calibration(bitext) -> None:
    model = EmbeddingClassifier(fine_tune_epochs=0, quantize=False, threshold=1.0, progress=False)
    model.fit(bitext.train.texts[::3], bitext.train.labels[::3])
    assert model.threshold_ == 1.0
    assert model.predict(bitext.holdout.texts[:5]) == [None] * 5
    assert model.classify(bitext.holdout.texts[0]).label in model.classes_


def test_unfitted_model_raises_not_fitted() -> None:
    model = EmbeddingClassifier()
    for call in (lambda: model.predict(["hi"]), lambda: model.classify("hi"), lambda: model.predict_proba(["hi"])):
        with pytest.raises(NotFittedError):
            call()
    with pytest.raises(NotFittedError):
        model.save("unused")


@pytest.mark.parametrize(
    ("texts", "labels", "params"),
    [
        (["a", "b"], ["x"], {}),
        (["a", "b"], ["x", "x"], {}),
        ("a single string", ["x"] * 15, {}),
        (["a", "b"], ["x", "y"], {"C": -1.0}),
    ],
)
def test_fit_rejects_bad_input(texts, labels, params) -> None:
    with pytest.raises(ConfigError):
        EmbeddingClassifier(fine_tune_epochs=0, progress=False, **params).fit(texts, labels)
