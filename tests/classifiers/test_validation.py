"""EmbeddingClassifier's validation and estimator contract: no encoder, no fit, no model needed."""

from __future__ import annotations

from pathlib import Path

import pytest

from classifiers import EmbeddingClassifier
from router.errors import ArtifactError, ConfigError, NotFittedError


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
        (["a", "b"], ["x", "y"], {"exemplar_weight": -0.5}),
    ],
)
def test_fit_rejects_bad_input(texts, labels, params) -> None:
    with pytest.raises(ConfigError):
        EmbeddingClassifier(fine_tune_epochs=0, progress=False, **params).fit(texts, labels)


def test_no_artifact_raises_artifact_error(tmp_path: Path) -> None:
    with pytest.raises(ArtifactError):
        EmbeddingClassifier.load(tmp_path / "nothing-here")
