"""The routing rules, in their documented order, without any model."""

from __future__ import annotations

import pytest

from router import BadRequestError, PrivacyError, RouterConfig
from router._request import build_request
from router.policy import RoutingPolicy
from router.types import Reason


def req(text: str = "where is my order", model: str = "auto", **kw):
    return build_request(max_input_chars=10_000, model=model, messages=[{"role": "user", "content": text}], **kw)


@pytest.fixture
def policy() -> RoutingPolicy:
    return RoutingPolicy(
        RouterConfig(
            routing={"local_categories": ["ORDER"], "private_categories": ["ACCOUNT"]},
            models={"gpt-4o-pinned": {"litellm_model": "openai/gpt-4o", "always_cloud": True}},
            cloud={"default_model": "gpt-4o-mini"},
        )
    )


def test_local_category_is_local(policy) -> None:
    d = policy.decide(req(), category="ORDER", has_classifier=True)
    assert (d.tier, d.reason, d.cloud_model) == ("local", Reason.LOCAL_CATEGORY, "gpt-4o-mini")


def test_named_model_is_routed_but_keeps_its_cloud_model(policy) -> None:
    assert policy.decide(req(model="gpt-4o"), category="ORDER", has_classifier=True).tier == "local"
    d = policy.decide(req(model="gpt-4o"), category=None, has_classifier=True)
    assert (d.tier, d.reason, d.cloud_model) == ("cloud", Reason.EDGE_CASE, "gpt-4o")


@pytest.mark.parametrize(
    ("category", "has_classifier", "reason"),
    [(None, True, Reason.EDGE_CASE), ("REFUND", True, Reason.CATEGORY_NOT_LOCAL), (None, False, Reason.NO_CLASSIFIER)],
)
def test_cloud_reasons(policy, category, has_classifier, reason) -> None:
    d = policy.decide(req(), category=category, has_classifier=has_classifier)
    assert (d.tier, d.reason) == ("cloud", reason)


def test_privacy_beats_everything(policy) -> None:
    d = policy.decide(req("my email is jane@example.com", model="gpt-4o-pinned"), category=None, has_classifier=True)
    assert (d.tier, d.reason, d.detail, d.private) == ("local", Reason.PII_MATCH, "email in messages[0]", True)
    d = policy.decide(req(), category="ACCOUNT", has_classifier=True)
    assert (d.tier, d.reason, d.private) == ("local", Reason.PRIVATE_CATEGORY, True)


def test_private_request_the_local_tier_cannot_serve_is_refused(policy) -> None:
    with pytest.raises(PrivacyError, match="tools"):
        policy.decide(req("card 4111 1111 1111 1111", tools=[{"type": "function", "function": {"name": "f"}}]), category=None, has_classifier=True)


def test_forced_local_and_its_limits(policy) -> None:
    d = policy.decide(req(model="local"), category=None, has_classifier=True)
    assert (d.tier, d.reason, d.forced) == ("local", Reason.FORCED_LOCAL, True)
    with pytest.raises(BadRequestError, match="n > 1"):
        policy.decide(req(model="local", n=2), category="ORDER", has_classifier=True)


def test_pinned_and_unsupported_go_to_cloud(policy) -> None:
    d = policy.decide(req(model="gpt-4o-pinned"), category="ORDER", has_classifier=True)
    assert (d.tier, d.reason) == ("cloud", Reason.PINNED_CLOUD)
    d = policy.decide(req(response_format={"type": "json_object"}), category="ORDER", has_classifier=True)
    assert (d.tier, d.reason, d.detail) == ("cloud", Reason.UNSUPPORTED, "response_format json_object")
    image = [{"type": "text", "text": "what is this"}, {"type": "image_url", "image_url": {"url": "data:,"}}]
    r = build_request(max_input_chars=1000, model="auto", messages=[{"role": "user", "content": image}])
    assert policy.decide(r, category="ORDER", has_classifier=True).detail == "image_url content"


def test_route_named_models_off_sends_names_straight_to_cloud() -> None:
    p = RoutingPolicy(RouterConfig(routing={"local_categories": "*", "route_named_models": False}))
    assert p.decide(req(model="gpt-4o"), category="X", has_classifier=True).reason == Reason.DIRECT_MODEL
    assert p.decide(req(model="auto"), category="X", has_classifier=True).tier == "local"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("pay with 4111 1111 1111 1111 please", "card_number"),
        ("card 4111111111111112", None),  # fails the Luhn check: an order number, not a card
        ("how can I cancel purchase 113542617735903?", None),
        ("call me at +44 20 7946 0958", "phone"),
        ("my number is (415) 555-0199", "phone"),
        ("help me cancel purchase 00004587345", None),
        ("ssn 123-45-6789", "us_ssn"),
        ("iban DE89 3704 0044 0532 0130 00", "iban"),
        ("mail me: a.b@example.org", "email"),
    ],
)
def test_default_pii_patterns(policy, text, expected) -> None:
    assert policy.pii_match(text) == expected
