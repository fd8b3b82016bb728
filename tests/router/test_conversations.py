"""Conversation-aware routing: follow-ups inherit their topic, switches do not, cloud topics stay sticky."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest

from router import Client, ConversationConfig, Reason, RouterConfig, RoutingPolicy, context_dependent, resolve_topics
from router._request import build_request
from router._sticky import CloudAnswers

ORDER_QUERY = "I want to cancel the order I placed yesterday"
FEEDBACK_QUERY = "I want to leave a review about your customer service"
PAYMENT_QUERY = "I cannot pay with my credit card, what payment methods do you accept?"
# The session classifier is uncalibrated (every query confident): this edge makes "ok do it" alone
# (confidence 0.46) and an out-of-scope poem request (0.48) edge cases, the Bitext questions (0.67+) not.
EDGE = {"threshold": 0.6}


@dataclass(frozen=True)
class Own:
    """A classifier's prediction of one turn alone, as resolve_topics reads it."""

    category: str | None
    confidence: float


def conversation(*turns: str, answers: tuple[str, ...] = ()) -> list[dict[str, str]]:
    """User turns with an assistant answer between each (``answers`` in order, else a placeholder)."""
    messages: list[dict[str, str]] = []
    for i, text in enumerate(turns):
        if i:
            messages.append({"role": "assistant", "content": answers[i - 1] if i - 1 < len(answers) else f"answer {i}"})
        messages.append({"role": "user", "content": text})
    return messages


# -- the follow-up detector and the walk over turns (no model) ------------------------------------


@pytest.mark.parametrize(
    "text",
    ["ok do it", "the one from last month", "what if it already shipped?", "yes please, go ahead", "huh?",
     "can I do that from my phone?", "and what happens after that?", "what if I'm not home?", "OK thanks!",
     "do I have to sign in first?", "can I just email them instead?", "the order from last Tuesday",
     "for my work account", "i sent it back ten days ago", "come again?"],
)  # fmt: skip
def test_context_dependent_turns(text: str) -> None:
    assert context_dependent(text)


@pytest.mark.parametrize(
    "text",
    ["tell me a joke", "also, can you write me a poem about it?", "I want a refund", "what's the weather tomorrow?",
     ORDER_QUERY, "Oh, also: would it be possible to leave feedback about a service?", "", "   ",
     "and " + "word " * 20, "what are your opening hours on sunday?", "the app crashes when I pay",
     "I placed an order two weeks ago and it never arrived"],
)  # fmt: skip
def test_self_contained_turns(text: str) -> None:
    assert not context_dependent(text)


def test_a_follow_up_inherits_the_topic_of_the_turn_that_opened_it() -> None:
    turns = [(0, ORDER_QUERY), (2, "how much does that cost?"), (4, "ok do it")]
    topics = resolve_topics(turns, [Own("ORDER", 0.94), Own(None, 0.4), Own("DELIVERY", 0.6)])
    assert [t.category for t in topics] == ["ORDER", "ORDER", "ORDER"]
    assert [t.follows for t in topics] == [None, 0, 0]  # a follow-up of a follow-up continues the opener's topic
    assert [t.own_category for t in topics] == ["ORDER", None, "DELIVERY"]


def test_a_switch_keeps_its_own_category_or_goes_to_the_cloud() -> None:
    turns = [(0, ORDER_QUERY), (2, FEEDBACK_QUERY), (4, "also, can you write me a poem?"), (6, "ok do it")]
    topics = resolve_topics(turns, [Own("ORDER", 0.94), Own("FEEDBACK", 0.9), Own(None, 0.3), Own(None, 0.3)])
    assert [t.category for t in topics] == ["ORDER", "FEEDBACK", None, None]  # after an out-of-scope turn, "it" is that
    assert [t.follows for t in topics] == [None, None, None, 4]


def test_a_dependent_turn_confidently_about_another_category_is_a_switch() -> None:
    turns = [(0, ORDER_QUERY), (2, "and the refund for it?")]
    assert resolve_topics(turns, [Own("ORDER", 0.94), Own("REFUND", 0.95)])[-1].category == "REFUND"
    assert resolve_topics(turns, [Own("ORDER", 0.94), Own("REFUND", 0.81)])[-1].category == "ORDER"
    never = resolve_topics(turns, [Own("ORDER", 0.94), Own("REFUND", 1.0)], switch_confidence=1.01)
    assert never[-1].category == "ORDER"


def test_the_first_turn_is_always_its_own_topic() -> None:
    (topic,) = resolve_topics([(0, "ok do it")], [Own(None, 0.2)])
    assert (topic.category, topic.follows) == (None, None)


# -- stickiness: which earlier answers were the cloud's ------------------------------------------


def test_cloud_answers_are_recognised_in_a_resent_conversation_and_forgotten_oldest_first() -> None:
    answers = CloudAnswers(size=2)
    answers.remember("Here is how  to cancel\nan order.")
    messages = conversation("cancel my order", "ok do it", answers=("Here is how to cancel an order.",))
    assert answers.first_in(messages, after=0, before=2) == 1  # whitespace does not matter
    assert answers.first_in(messages, after=2, before=3) is None  # only the topic's own span is searched
    edited = conversation("cancel my order", "ok do it", answers=("Here is how to cancel an order!",))
    assert answers.first_in(edited, after=0, before=2) is None  # an edited answer is not the cloud's
    answers.remember("second")
    answers.remember("third")
    assert answers.first_in(messages, after=0, before=2) is None
    off = CloudAnswers(size=0)
    off.remember("second")
    assert off.first_in(conversation("a", "b", answers=("second",)), after=0, before=3) is None


def test_policy_keeps_a_sticky_topic_in_the_cloud_but_never_a_private_one() -> None:
    policy = RoutingPolicy(RouterConfig(routing={"local_categories": ["ORDER"], "private_categories": ["PAYMENT"]}))
    follow_up = build_request({"model": "auto", "messages": conversation(ORDER_QUERY, "ok do it")}, max_input_chars=10_000)
    sticky = policy.decide(follow_up, category="ORDER", has_classifier=True, follows=0, sticky="the cloud answered messages[1]")
    assert (sticky.tier, sticky.reason) == ("cloud", Reason.STICKY_CLOUD)
    assert "follow-up of messages[0]" in sticky.detail and "messages[1]" in sticky.detail
    plain = policy.decide(follow_up, category="ORDER", has_classifier=True, follows=0)
    assert (plain.tier, plain.reason, plain.detail) == ("local", Reason.LOCAL_CATEGORY, "ORDER (follow-up of messages[0])")
    private = build_request({"model": "auto", "messages": conversation(PAYMENT_QUERY, "ok do it")}, max_input_chars=10_000)
    kept = policy.decide(private, category="PAYMENT", has_classifier=True, follows=0, sticky="the cloud answered messages[1]",
                         turn_categories=[(0, "PAYMENT"), (2, None)])  # fmt: skip
    assert kept.tier == "local" and kept.private
    edge = policy.decide(follow_up, category=None, has_classifier=True, follows=0, sticky="x")
    assert edge.reason is Reason.EDGE_CASE and "follow-up of messages[0]" in edge.detail


def test_conversation_settings_are_validated() -> None:
    assert ConversationConfig().follow_ups == "inherit" and ConversationConfig().sticky_cloud
    with pytest.raises(ValueError):
        ConversationConfig(follow_ups="sometimes")
    with pytest.raises(ValueError):
        ConversationConfig(switch_confidence=2)


# -- the router, with the real classifier and model ----------------------------------------------


@pytest.mark.slow
def test_a_follow_up_is_answered_in_its_conversations_category(make_config: Any) -> None:
    with Client(make_config(classifier=EDGE)) as client:
        engine = client._engine
        alone = client.chat.completions.create(model="auto", messages=[{"role": "user", "content": "ok do it"}], max_tokens=4)
        encoded = engine._turns.encoded
        r = client.chat.completions.create(model="auto", messages=conversation(ORDER_QUERY, "ok do it"), max_tokens=4)
        assert engine._turns.encoded == encoded + 1  # "ok do it" was cached: only the new turn met the encoder
    assert alone.router.reason is Reason.EDGE_CASE  # alone it is nothing
    assert (r.router.tier, r.router.category, r.router.reason) == ("local", "ORDER", Reason.LOCAL_CATEGORY)
    assert r.router.detail == "ORDER (follow-up of messages[0])"
    with Client(make_config(classifier=EDGE, conversation={"follow_ups": "last_message"})) as client:
        old = client.chat.completions.create(model="auto", messages=conversation(ORDER_QUERY, "ok do it"), max_tokens=4)
    assert (old.router.tier, old.router.reason) == ("cloud", Reason.EDGE_CASE)


@pytest.mark.slow
def test_a_topic_switch_is_not_inherited(make_config: Any) -> None:
    with Client(make_config(classifier=EDGE)) as client:
        _check_switches(client)


def _check_switches(client: Client) -> None:
    to_feedback = client.chat.completions.create(model="auto", messages=conversation(ORDER_QUERY, FEEDBACK_QUERY), max_tokens=4)
    assert (to_feedback.router.tier, to_feedback.router.category) == ("cloud", "FEEDBACK")
    assert to_feedback.router.reason is Reason.CATEGORY_NOT_LOCAL and "follow-up" not in to_feedback.router.detail
    poem = conversation(ORDER_QUERY, "also, can you write me a poem about the sea?")
    out = client.chat.completions.create(model="auto", messages=poem, max_tokens=4)
    assert (out.router.tier, out.router.reason) == ("cloud", Reason.EDGE_CASE)


@pytest.mark.slow
def test_a_topic_the_cloud_answered_stays_there_and_a_private_one_never_leaves(make_config: Any, standin: Any) -> None:
    with Client(make_config(classifier=EDGE)) as client:
        # The local tier cannot give JSON mode: the cloud answers the opening turn.
        first = client.chat.completions.create(
            model="auto", messages=conversation(ORDER_QUERY), max_tokens=8, response_format={"type": "json_object"}
        )
        assert (first.router.tier, first.router.reason) == ("cloud", Reason.UNSUPPORTED)
        cloud_answer = first.choices[0].message.content
        follow_up = conversation(ORDER_QUERY, "ok do it", answers=(cloud_answer,))
        sticky = client.chat.completions.create(model="auto", messages=follow_up, max_tokens=4)
        assert (sticky.router.tier, sticky.router.reason, sticky.router.category) == ("cloud", Reason.STICKY_CLOUD, "ORDER")
        assert "messages[1]" in sticky.router.detail
        # The next turn carries the sticky answer too: still the cloud's topic.
        later = follow_up + [{"role": "assistant", "content": sticky.choices[0].message.content}, {"role": "user", "content": "and what happens after that?"}]
        assert client.chat.completions.create(model="auto", messages=later, max_tokens=4).router.reason is Reason.STICKY_CLOUD
        # An answer the router did not give from the cloud does not make a topic sticky.
        invented = conversation(ORDER_QUERY, "ok do it", answers=("Sure, I cancelled it.",))
        assert client.chat.completions.create(model="auto", messages=invented, max_tokens=4).router.tier == "local"
        # A new question in the same conversation is routed on its own.
        fresh = conversation(ORDER_QUERY, "how do I track the delivery of my package?", answers=(cloud_answer,))
        assert client.chat.completions.create(model="auto", messages=fresh, max_tokens=4).router.reason is not Reason.STICKY_CLOUD
        # Privacy comes first: a private topic with a cloud answer in its history stays local.
        sent = len(standin.received())
        private = conversation(PAYMENT_QUERY, "ok do it", answers=(cloud_answer,))
        kept = client.chat.completions.create(model="auto", messages=private, max_tokens=4)
        assert kept.router.tier == "local" and kept.router.reason is Reason.PRIVATE_CATEGORY
        assert len(standin.received()) == sent
    with Client(make_config(classifier=EDGE, conversation={"sticky_cloud": False})) as client:
        client.chat.completions.create(model="auto", messages=conversation(ORDER_QUERY), max_tokens=8, response_format={"type": "json_object"})
        assert client.chat.completions.create(model="auto", messages=follow_up, max_tokens=4).router.tier == "local"


@pytest.mark.slow
def test_the_same_decisions_over_http(make_config: Any) -> None:
    import httpx

    from tests.conftest import serving

    with Client(make_config(classifier=EDGE)) as client, serving(client) as url, httpx.Client(base_url=url, timeout=120) as http:

        def ask(messages: list[dict[str, str]], **extra: Any) -> dict[str, Any]:
            r = http.post("/v1/chat/completions", json={"model": "auto", "messages": messages, "max_tokens": 4, **extra})
            assert r.status_code == 200, r.text
            return r.json()

        inherited = ask(conversation(ORDER_QUERY, "ok do it"))["router"]
        assert (inherited["tier"], inherited["category"], inherited["detail"]) == ("local", "ORDER", "ORDER (follow-up of messages[0])")
        switched = ask(conversation(ORDER_QUERY, FEEDBACK_QUERY))["router"]
        assert (switched["tier"], switched["category"]) == ("cloud", "FEEDBACK")
        first = ask(conversation(ORDER_QUERY), response_format={"type": "json_object"})
        answer = first["choices"][0]["message"]["content"]
        sticky = ask(conversation(ORDER_QUERY, "ok do it", answers=(answer,)))["router"]
        assert (sticky["tier"], sticky["reason"]) == ("cloud", "sticky_cloud")


# -- quality evidence for follow-ups ---------------------------------------------------------------


def test_follow_ups_are_judged_on_their_own_evidence_once_they_have_enough() -> None:
    from router.quality import CategoryEvidence, QualityGate, evidence_from_metrics, followup_key
    from router import QualityConfig

    metrics = {"ORDER": {"similarity": 0.8, "degenerate_rate": 0.0, "examples": 40,
                         "followup_count": 12, "followup_similarity": 0.4, "followup_degenerate_rate": 0.25}}  # fmt: skip
    offline = evidence_from_metrics(metrics, "evaluation")
    assert offline[followup_key("ORDER")] == CategoryEvidence(0.4, 0.25, 12, "evaluation")
    config = QualityConfig(min_samples=10, min_similarity=0.6)
    gate = QualityGate(config, lambda version: offline)
    assert gate.verdict("v1", "ORDER").open  # first questions are proven
    closed = gate.followup_verdict("v1", "ORDER")  # follow-ups, measured apart, are not
    assert not closed.open and closed.reason is Reason.LOCAL_QUALITY_BELOW_FLOOR and "0.40" in closed.detail

    # Without follow-up figures, follow-ups share the category's evidence until live samples decide.
    single = QualityGate(config, lambda version: evidence_from_metrics({"ORDER": {k: v for k, v in metrics["ORDER"].items() if not k.startswith("followup")}}, "e"))
    assert single.followup_verdict("v1", "ORDER").open
    for _ in range(9):
        single.record("v1", followup_key("ORDER"), 0.2, False)
    assert single.followup_verdict("v1", "ORDER").open  # 9 < min_samples: not yet
    single.record("v1", followup_key("ORDER"), 0.2, False)
    assert not single.followup_verdict("v1", "ORDER").open and single.verdict("v1", "ORDER").open
    trusted = QualityGate(QualityConfig(min_samples=10, overrides={"ORDER": "trust"}), lambda version: offline)
    assert trusted.followup_verdict("v1", "ORDER").open  # an operator's override covers the follow-ups too


# -- what the local model is given of a conversation -----------------------------------------------


def test_topic_history_is_the_topics_user_turns_as_one_question() -> None:
    from hybrid_common.chat import topic_messages

    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "where is my parcel?"},
        {"role": "assistant", "content": "It ships tomorrow."},
        {"role": "user", "content": "I want to cancel my order"},
        {"role": "assistant", "content": "Here are the steps: ..."},
        {"role": "user", "content": [{"type": "text", "text": "ok do it"}]},
    ]
    assert topic_messages(messages, 3) == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "I want to cancel my order\nok do it"},
    ]
    assert topic_messages(messages, 5)[-1] == {"role": "user", "content": "ok do it"}  # a turn that opens its own topic


@pytest.mark.slow
def test_a_later_turn_is_served_and_logged_with_its_topic(make_config: Any) -> None:
    from router import TrafficLog

    messages = conversation("where is my parcel?", ORDER_QUERY, "ok do it", answers=("It ships tomorrow.", "Here are the steps."))
    config = make_config(classifier=EDGE)
    with Client(config) as client:
        seen: list[Any] = []
        engine = client._engine
        original = engine.local.generate
        engine.local.generate = lambda msgs, *a, **k: (seen.append(msgs), original(msgs, *a, **k))[1]  # type: ignore[method-assign]
        r = client.chat.completions.create(model="auto", messages=messages, max_tokens=4)
        full = make_config(classifier=EDGE, local={"history": "full"})
    assert (r.router.tier, r.router.category) == ("local", "ORDER")
    assert seen[-1] == [{"role": "user", "content": f"{ORDER_QUERY}\nok do it"}]  # the topic's turns, no answers
    with TrafficLog(config.log.path) as log:
        (record,) = list(log.records())
    assert record.topic_start == 2 and record.messages == messages  # the log keeps the whole conversation
    with Client(full) as client:
        seen.clear()
        engine = client._engine
        original_full = engine.local.generate
        engine.local.generate = lambda msgs, *a, **k: (seen.append(msgs), original_full(msgs, *a, **k))[1]  # type: ignore[method-assign]
        client.chat.completions.create(model="auto", messages=messages, max_tokens=4)
    assert seen[-1] == messages


def test_a_request_with_too_many_user_turns_is_refused_before_any_encoder_work() -> None:
    from router import BadRequestError

    many = conversation(*[f"question number {i}" for i in range(5)])
    with pytest.raises(BadRequestError) as refused:
        build_request({"model": "auto", "messages": many}, max_input_chars=10_000, max_user_turns=4)
    assert refused.value.code == "too_many_turns" and refused.value.param == "messages"
    assert build_request({"model": "auto", "messages": many}, max_input_chars=10_000, max_user_turns=5).messages
    assert RouterConfig().routing.max_user_turns == 256
