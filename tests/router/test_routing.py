"""Routing by category, edge cases, the privacy rule, and the log behind every decision."""

from __future__ import annotations

import pytest

from router import Client, PrivacyError, Reason
from tests.conftest import user

pytestmark = pytest.mark.slow

ORDER_QUERY = "I want to cancel the order I placed yesterday"
FEEDBACK_QUERY = "I want to leave a review about your customer service"
PAYMENT_QUERY = "I cannot pay with my credit card, what payment methods do you accept?"


def test_classifier_routes_by_category(client: Client) -> None:
    local = client.chat.completions.create(model="auto", messages=user(ORDER_QUERY), max_tokens=4)
    assert (local.router.tier, local.router.category, local.router.reason) == ("local", "ORDER", Reason.LOCAL_CATEGORY)
    assert 0 < local.router.confidence <= 1 and local.router.classify_ms > 0
    cloud = client.chat.completions.create(model="gpt-4o", messages=user(FEEDBACK_QUERY), max_tokens=4)
    assert (cloud.router.tier, cloud.router.category, cloud.router.reason) == ("cloud", "FEEDBACK", Reason.CATEGORY_NOT_LOCAL)
    assert cloud.router.cost_usd > 0  # priced by litellm as gpt-4o


def test_low_confidence_is_an_edge_case_for_the_cloud(make_config) -> None:
    with Client(make_config(classifier={"threshold": 0.999999})) as client:
        r = client.chat.completions.create(model="auto", messages=user(ORDER_QUERY), max_tokens=4)
    assert (r.router.tier, r.router.reason, r.router.category) == ("cloud", Reason.EDGE_CASE, None)


def test_classifier_threads_come_from_config(make_config) -> None:
    with Client(make_config(classifier={"threads": 1})) as client:
        r = client.chat.completions.create(model="auto", messages=user(ORDER_QUERY), max_tokens=4)
        assert client._engine.classifier.encoder_.num_threads == 1
    assert r.router.category == "ORDER"


def test_capability_checks_send_to_cloud_and_say_why(client: Client) -> None:
    r = client.chat.completions.create(
        model="auto", messages=user(ORDER_QUERY), max_tokens=4, response_format={"type": "json_object"}
    )
    assert (r.router.tier, r.router.reason, r.router.detail) == ("cloud", Reason.UNSUPPORTED, "response_format json_object")


def test_context_longer_than_the_local_window_goes_to_cloud(make_config) -> None:
    with Client(make_config(local={"n_ctx": 128, "reject_echo": False, "degenerate_min_span": 4000})) as client:
        long = ORDER_QUERY + " " + "please " * 150
        r = client.chat.completions.create(model="auto", messages=user(long), max_tokens=4)
    assert r.router.tier == "cloud" and r.router.fallback_from == "local" and r.router.fallback_reason.startswith("context")


def test_private_queries_never_reach_the_cloud(client: Client, standin) -> None:
    seen_before = len(standin.received())
    private = client.chat.completions.create(model="gpt-4o", messages=user(PAYMENT_QUERY), max_tokens=4)
    assert (private.router.tier, private.router.reason) == ("local", Reason.PRIVATE_CATEGORY)
    pii = client.chat.completions.create(model="pinned-cloud", messages=user("feedback from jane.doe@example.com"), max_tokens=4)
    assert (pii.router.tier, pii.router.reason) == ("local", Reason.PII_MATCH) and pii.router.detail.startswith("email")
    assert pii.router.quality == "unproven"  # FEEDBACK has no evidence: answered locally, flagged
    with pytest.raises(PrivacyError):
        client.chat.completions.create(
            model="gpt-4o", messages=user("refund to card 4111 1111 1111 1111"),
            tools=[{"type": "function", "function": {"name": "refund", "parameters": {"type": "object"}}}],
        )  # fmt: skip
    client.chat.completions.create(model="gpt-4o", messages=user(FEEDBACK_QUERY), max_tokens=2)  # a control that does go out
    received = standin.received()[seen_before:]
    bodies = " ".join(str(r["body"]) for r in received)
    assert FEEDBACK_QUERY in bodies  # the recorder works
    assert "credit card" not in bodies and "jane.doe" not in bodies and "4111" not in bodies


def test_log_records_every_routed_request(client: Client) -> None:
    client.warmup()  # litellm loaded: local answers then carry a cloud-cost estimate
    log = client.traffic_log
    before = log.count()
    ids = [
        client.chat.completions.create(model="auto", messages=user(q), max_tokens=3, user="u-9").router.request_id
        for q in (ORDER_QUERY, FEEDBACK_QUERY, PAYMENT_QUERY)
    ]
    with pytest.raises(PrivacyError):
        client.chat.completions.create(model="gpt-4o", messages=user("card 4111 1111 1111 1111"), n=2)
    rows = list(log.records())[before:]
    assert [r.id for r in rows[:3]] == ids and len(rows) == 4
    order, feedback, payment, refused = rows
    assert (order.tier, order.category, order.reason, order.served_model) == ("local", "ORDER", "local_category", "gemma-3-270m-q4_k_m")
    assert (feedback.tier, feedback.category, feedback.backend) == ("cloud", "FEEDBACK", "litellm")
    assert feedback.cost_usd > 0 and order.cost_usd == 0 and order.cloud_cost_usd_estimate is not None
    assert payment.reason == "private_category" and payment.user == "u-9"
    assert order.messages == user(ORDER_QUERY) and order.response and order.latency_ms > 0 and order.prompt_tokens > 0
    assert refused.reason == "refused" and refused.error_type == "PrivacyError" and refused.tier is None
    assert all(r.error_type is None for r in (order, feedback, payment))
