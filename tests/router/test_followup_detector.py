"""The learned follow-up detector: its weights, its encoder check, and what it changes in routing."""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from router import Client, FollowUpDetector, Reason, context_dependent, resolve_topics
from router.errors import ConfigError
from tests.router.test_conversations import EDGE, ORDER_QUERY, conversation

# A follow-up (holdout2's wording, which the detector never trains on) the word rule reads as a question of its own.
COME_BACK_LATER = "do I have to finish it all in one go, or can I come back to it later?"


@dataclass(frozen=True)
class Own:
    """A turn's prediction alone, with the embedding the detector reads."""

    category: str | None
    confidence: float
    embedding: np.ndarray | None = None


def _clusters(seed: int = 0, dim: int = 8) -> tuple[dict[str, list[np.ndarray]], dict[str, np.ndarray]]:
    """Three separable groups of unit vectors around one centre each."""
    rng = np.random.default_rng(seed)
    centres = {name: rng.normal(size=dim) for name in ("follow_up", "out_of_scope", "self_contained")}
    examples = {}
    for name, centre in centres.items():
        points = centre + 0.2 * rng.normal(size=(30, dim))
        examples[name] = list(points / np.linalg.norm(points, axis=1, keepdims=True))
    return examples, {k: v / np.linalg.norm(v) for k, v in centres.items()}


def test_a_fitted_detector_separates_its_classes_and_survives_a_round_trip(tmp_path: Path) -> None:
    examples, centres = _clusters()
    detector = FollowUpDetector.fit(examples, encoder_sha256="a" * 64)
    assert detector.follow_up_probability(centres["follow_up"]) > 0.9
    assert detector.follow_up_probability(centres["out_of_scope"]) < 0.1
    assert detector.is_follow_up(Own(None, 0.3, centres["follow_up"]))
    assert not detector.is_follow_up(Own(None, 0.3, centres["self_contained"]))
    assert not detector.is_follow_up(Own(None, 0.3))  # no embedding: no verdict
    loaded = FollowUpDetector.load(detector.save(tmp_path / "detector.npz"))
    for centre in centres.values():
        assert loaded.follow_up_probability(centre) == pytest.approx(detector.follow_up_probability(centre))
    assert (loaded.encoder_sha256, loaded.threshold) == ("a" * 64, 0.7)
    assert FollowUpDetector.load(tmp_path / "detector.npz", threshold=0.95).threshold == 0.95


def test_a_detector_is_used_only_with_the_encoder_it_was_trained_on() -> None:
    examples, _ = _clusters()
    detector = FollowUpDetector.fit(examples, encoder_sha256="a" * 64)

    @dataclass
    class Classifier:
        encoder_sha256_: str | None

    assert detector.fits(Classifier("a" * 64))
    assert not detector.fits(Classifier("b" * 64)) and not detector.fits(object())


def test_malformed_detectors_are_refused(tmp_path: Path) -> None:
    examples, centres = _clusters()
    detector = FollowUpDetector.fit(examples, encoder_sha256="a" * 64)
    with pytest.raises(ConfigError):
        detector.follow_up_probability(np.ones(3))  # another encoder's width
    with pytest.raises(ConfigError):
        replace(detector, threshold=0.0)
    with pytest.raises(ConfigError):
        FollowUpDetector.fit({"follow_up": examples["follow_up"]}, encoder_sha256="a" * 64)
    other = tmp_path / "not-a-detector.npz"
    np.savez(other, coef=np.ones((3, 8)))
    with pytest.raises(ConfigError):
        FollowUpDetector.load(other)
    with pytest.raises(ConfigError):
        FollowUpDetector.load(tmp_path / "missing.npz")


def test_resolve_topics_counts_a_learned_follow_up_as_context_dependent() -> None:
    turns = [(0, "I want to cancel my order"), (2, COME_BACK_LATER), (4, "tell me a joke")]
    assert not context_dependent(COME_BACK_LATER)
    own = [Own("ORDER", 0.95), Own(None, 0.4), Own(None, 0.3)]
    rule = resolve_topics(turns, own)
    assert [t.category for t in rule] == ["ORDER", None, None]
    learned = resolve_topics(turns, own, learned=lambda prediction: prediction is own[1])
    assert [t.category for t in learned] == ["ORDER", "ORDER", None]
    assert learned[1].follows == 0 and learned[1].own_category is None
    # A turn confidently about another category is a switch, whoever calls it a follow-up.
    switch = resolve_topics(turns[:2], [Own("ORDER", 0.95), Own("REFUND", 0.97)], learned=lambda prediction: True)
    assert [t.category for t in switch] == ["ORDER", "REFUND"] and switch[1].follows is None


# -- the router, with the session classifier ---------------------------------------------------------


@pytest.fixture(scope="module")
def detector_for_session_classifier(classifier_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A detector trained for the session classifier's encoder on the benchmark's development wording."""
    from classifiers import EmbeddingClassifier
    from evals import make_conversations as mc
    from tests.conftest import bitext_rows

    classifier = EmbeddingClassifier.load(classifier_path)
    halves = ("dev", "test", mc.HOLDOUT)
    follow = [t for h in halves for t in (*mc.CONFIRM[h], *mc.CLARIFY[h], *mc.GENERIC_ANAPHORIC[h])]
    follow += [t for h in halves for lists in mc.ANAPHORIC.values() for t, _ in lists[h]]
    outside = [t for h in halves for t in mc.OUT_OF_SCOPE_REQUESTS[h]]
    contained = [r["instruction"] for r in bitext_rows()[::60]]

    def embed(texts: list[str]) -> list[np.ndarray]:
        return [p.embedding for p in classifier.classify_many(texts)]

    examples = {"follow_up": embed(follow), "out_of_scope": embed(outside), "self_contained": embed(contained)}
    detector = FollowUpDetector.fit(examples, encoder_sha256=classifier.encoder_sha256_)
    return detector.save(tmp_path_factory.mktemp("followups") / "detector.npz")


@pytest.mark.slow
def test_a_learned_follow_up_inherits_where_the_rule_alone_sends_it_to_the_cloud(
    make_config: Any, detector_for_session_classifier: Path
) -> None:
    messages = conversation(ORDER_QUERY, COME_BACK_LATER)
    with Client(make_config(classifier=EDGE)) as client:
        rule = client.chat.completions.create(model="auto", messages=messages, max_tokens=4)
    assert (rule.router.tier, rule.router.reason) == ("cloud", Reason.EDGE_CASE)
    config = make_config(classifier=EDGE, conversation={"followup_detector": detector_for_session_classifier})
    with Client(config) as client:
        learned = client.chat.completions.create(model="auto", messages=messages, max_tokens=4)
        poem = client.chat.completions.create(
            model="auto", messages=conversation(ORDER_QUERY, "also, can you write me a poem about the sea?"), max_tokens=4
        )
    assert (learned.router.tier, learned.router.category, learned.router.reason) == ("local", "ORDER", Reason.LOCAL_CATEGORY)
    assert learned.router.detail == "ORDER (follow-up of messages[0])"
    assert (poem.router.tier, poem.router.reason) == ("cloud", Reason.EDGE_CASE)  # out of scope stays out


@pytest.mark.slow
def test_a_detector_for_another_encoder_leaves_the_rule_alone_and_says_so(
    make_config: Any, detector_for_session_classifier: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    foreign = replace(FollowUpDetector.load(detector_for_session_classifier), encoder_sha256="0" * 64).save(tmp_path / "foreign.npz")
    config = make_config(classifier=EDGE, conversation={"followup_detector": foreign})
    with caplog.at_level(logging.WARNING, logger="router"), Client(config) as client:
        for _ in range(2):
            r = client.chat.completions.create(model="auto", messages=conversation(ORDER_QUERY, COME_BACK_LATER), max_tokens=4)
            assert (r.router.tier, r.router.reason) == ("cloud", Reason.EDGE_CASE)
    warnings = [rec for rec in caplog.records if "followup_detector was trained on another encoder" in rec.getMessage()]
    assert len(warnings) == 1


def test_a_missing_detector_file_is_a_configuration_error(make_config: Any, tmp_path: Path) -> None:
    with pytest.raises(ConfigError):
        Client(make_config(conversation={"followup_detector": tmp_path / "nope.npz"}))
