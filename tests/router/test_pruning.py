"""Long conversations on the local tier: pruned to the window (hybrid_common.pruning), never refused for their length."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import pytest

from hybrid_common.chat import message_text
from hybrid_common.pruning import prune_to_fit

ORDER_QUERY = "I want to cancel the order I placed yesterday"
CARD = "4539 1488 0343 6467"  # a Luhn-valid test number: PII, so the conversation is private


class CharBudget:
    """A stand-in for the backend's ``fits``: the conversation's characters against a budget, calls counted."""

    def __init__(self, budget: int) -> None:
        self.budget = budget
        self.calls = 0

    def __call__(self, messages: Sequence[Mapping[str, Any]]) -> bool:
        self.calls += 1
        return sum(len(message_text(m.get("content"))) for m in messages) <= self.budget


def conversation(exchanges: int, *, system: str | None = "You are a support agent.", size: int = 50) -> list[dict[str, Any]]:
    """``exchanges`` user/assistant pairs of ``size`` characters each, then a last user question."""
    messages: list[dict[str, Any]] = [{"role": "system", "content": system}] if system else []
    for i in range(exchanges):
        messages.append({"role": "user", "content": f"question {i} ".ljust(size, "q")})
        messages.append({"role": "assistant", "content": f"answer {i} ".ljust(size, "a")})
    messages.append({"role": "user", "content": "and now?"})
    return messages


def size(messages: Sequence[Mapping[str, Any]]) -> int:
    return sum(len(message_text(m.get("content"))) for m in messages)


# -- prune_to_fit -------------------------------------------------------------------------------


def test_a_conversation_that_fits_is_unchanged() -> None:
    messages = conversation(2)
    pruned = prune_to_fit(messages, CharBudget(10_000))
    assert pruned is not None and not pruned.changed
    assert list(pruned.messages) == messages and pruned.dropped == () and pruned.detail == ""


def test_keeps_the_system_prompt_and_drops_the_oldest_whole_exchanges() -> None:
    messages = conversation(4)  # system, 4 x (user, assistant), user: 10 messages
    budget = len(messages[0]["content"]) + 2 * 100 + len("and now?")  # room for two exchanges, not three
    pruned = prune_to_fit(messages, CharBudget(budget))
    assert pruned is not None
    assert pruned.dropped == (1, 2, 3, 4)  # the two oldest exchanges, whole
    assert list(pruned.messages) == [messages[0], *messages[5:]]
    assert pruned.messages[1]["role"] == "user"  # the kept history starts with a question
    assert size(pruned.messages) <= budget
    assert pruned.detail == "dropped messages[1..4] (4 of 10) to fit the local window; kept the system prompt and the last 5 messages"


def test_never_starts_the_kept_history_with_an_answer() -> None:
    messages = conversation(3)
    # Room for the last assistant answer and the question, but not for the user turn before that answer.
    budget = len(messages[0]["content"]) + 50 + len("and now?") + 10
    pruned = prune_to_fit(messages, CharBudget(budget))
    assert pruned is not None
    assert list(pruned.messages) == [messages[0], messages[-1]]  # the orphaned answer went with its question
    assert pruned.dropped == (1, 2, 3, 4, 5, 6)


def test_the_last_user_message_and_what_follows_it_are_kept() -> None:
    messages = [*conversation(3, system=None), {"role": "assistant", "content": "Sure,"}]  # an answer prefix
    pruned = prune_to_fit(messages, CharBudget(len("and now?") + len("Sure,")))
    assert pruned is not None and list(pruned.messages) == messages[-2:]
    assert pruned.detail.endswith("kept the last 2 messages")


def test_system_messages_in_the_middle_stay_in_place() -> None:
    messages = conversation(3)
    messages.insert(3, {"role": "developer", "content": "Be brief."})  # after the first exchange
    budget = size([messages[0], messages[3], *messages[-3:]])
    pruned = prune_to_fit(messages, CharBudget(budget))
    assert pruned is not None
    assert list(pruned.messages) == [messages[0], messages[3], *messages[-3:]]
    assert pruned.dropped == (1, 2, 4, 5)
    assert "dropped messages[1..2, 4..5] (4 of 9)" in pruned.detail


def test_content_given_as_a_list_of_parts() -> None:
    messages = conversation(3)
    for m in messages[1:]:
        m["content"] = [{"type": "text", "text": m["content"]}]
    budget = len(messages[0]["content"]) + 100 + len("and now?")
    pruned = prune_to_fit(messages, CharBudget(budget))
    assert pruned is not None and list(pruned.messages) == [messages[0], *messages[-3:]]
    assert pruned.messages[-1]["content"] == [{"type": "text", "text": "and now?"}]  # kept as sent


def test_calls_fits_a_logarithmic_number_of_times() -> None:
    messages = conversation(500)  # 1,002 messages
    fits = CharBudget(len(messages[0]["content"]) + 37 * 100 + len("and now?"))
    pruned = prune_to_fit(messages, fits)
    assert pruned is not None and len(pruned.messages) == 1 + 37 * 2 + 1
    assert fits.calls <= 2 + 10  # the whole, the last question alone, then a binary search over 501 starts


def test_summary_quotes_the_dropped_user_turns_after_the_system_prompt() -> None:
    messages = conversation(4, size=200)  # exchanges of 400 characters: a note of 300 fits where an exchange does not
    messages[1]["content"] = "My order 123 never arrived.\n  It was   due on Monday."
    budget = len(messages[0]["content"]) + 2 * 400 + len("and now?") + 300
    pruned = prune_to_fit(messages, CharBudget(budget), summary_chars=300)
    assert pruned is not None and pruned.summary is not None
    assert pruned.dropped == (1, 2, 3, 4)
    assert pruned.messages[1] == {"role": "system", "content": pruned.summary}  # right after the system prompt
    assert pruned.summary.startswith("Earlier in this conversation (not shown) the user asked: ")
    assert '"My order 123 never arrived. It was due on Monday."; "question 1 ' in pruned.summary  # oldest first
    assert "answer" not in pruned.summary  # only the user's turns are quoted
    assert len(pruned.summary) <= 300 and size(pruned.messages) <= budget
    assert pruned.detail.endswith("; quoted the dropped user turns in a system note")
    assert "kept the system prompt and the last 5 messages" in pruned.detail  # the note is not a kept message


def test_summary_is_capped_and_prefers_the_most_recent_turns() -> None:
    messages = conversation(6, size=200)
    budget = len(messages[0]["content"]) + 400 + len("and now?") + 250  # one exchange, and room for a short note
    plain = prune_to_fit(messages, CharBudget(budget))
    noted = prune_to_fit(messages, CharBudget(budget), summary_chars=200)
    assert plain is not None and noted is not None and noted.summary is not None
    assert noted.dropped == plain.dropped == tuple(range(1, 11))  # the note never costs history
    assert len(noted.summary) <= 200
    assert "question 4" in noted.summary and "question 0" not in noted.summary
    assert all(len(q) <= 120 for q in noted.summary.split('"')[1::2])  # each quote is the start of its turn


def test_summary_is_dropped_when_it_does_not_fit() -> None:
    messages = conversation(4)
    budget = len(messages[0]["content"]) + 2 * 100 + len("and now?") + 10  # no room for a note
    pruned = prune_to_fit(messages, CharBudget(budget), summary_chars=500)
    assert pruned is not None and pruned.summary is None and pruned.dropped == (1, 2, 3, 4)
    assert all(m["role"] != "system" for m in pruned.messages[1:]) and size(pruned.messages) <= budget


def test_without_a_system_prompt_the_note_comes_first() -> None:
    messages = conversation(4, system=None, size=200)
    budget = 2 * 400 + len("and now?") + 250
    pruned = prune_to_fit(messages, CharBudget(budget), summary_chars=200)
    assert pruned is not None and pruned.summary is not None
    assert pruned.messages[0] == {"role": "system", "content": pruned.summary}
    assert list(pruned.messages[1:]) == messages[-5:]  # the user's own words untouched


def test_last_resort_cuts_the_last_user_message_from_its_start() -> None:
    system = {"role": "system", "content": "You are a support agent."}
    question = "x" * 500 + " So where is my parcel?"
    messages = [system, {"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"},
                {"role": "user", "content": [{"type": "text", "text": question}]}]  # fmt: skip
    budget = len(system["content"]) + 100
    fits = CharBudget(budget)
    pruned = prune_to_fit(messages, fits)
    assert pruned is not None and pruned.cut_chars > 0
    assert pruned.messages[0] is system and len(pruned.messages) == 2  # the system prompt is never cut
    last = pruned.messages[-1]["content"]
    assert last.startswith("…") and last.endswith("So where is my parcel?")
    assert size(pruned.messages) == budget  # the longest end that fits
    assert pruned.cut_chars == len(question) - (len(last) - 1)
    assert pruned.detail == (
        f"dropped messages[1..2] (2 of 4) to fit the local window; kept the system prompt and the last message; "
        f"cut the first {pruned.cut_chars} characters of the last user message (its end is kept)"
    )
    assert fits.calls <= 3 + 11  # whole, last question, its shortest end, then a binary search over 523 lengths


def test_a_single_message_too_long_is_cut_and_says_so() -> None:
    pruned = prune_to_fit([{"role": "user", "content": "y" * 300}], CharBudget(101))
    assert pruned is not None and pruned.dropped == () and pruned.messages[0]["content"] == "…" + "y" * 100
    assert pruned.detail == "cut the first 200 characters of the last user message to fit the local window (its end is kept)"


def test_nothing_fits_when_the_system_prompt_alone_is_too_long() -> None:
    messages = [{"role": "system", "content": "s" * 200}, {"role": "user", "content": "hello"}]
    assert prune_to_fit(messages, CharBudget(150)) is None
    assert prune_to_fit([{"role": "system", "content": "s" * 200}], CharBudget(150)) is None  # no user message


# -- the engine, with the packaged model ------------------------------------------------------
# With local.history = "full" (the local model sees every message): "topic", the default, gives it
# only the current topic's user turns, which a conversation rarely overflows.


def long_conversation(*, card: bool) -> list[dict[str, Any]]:
    """A system prompt, six order exchanges (the second with a card number, if ``card``), then a last
    question: far over 256 tokens."""
    messages: list[dict[str, Any]] = [{"role": "system", "content": "You are the support agent of an online shop."}]
    for i in range(6):
        number = f" The card on the account is {CARD}." if card and i == 1 else ""
        messages.append({"role": "user", "content": f"I want to cancel order number {1000 + i}, it has not shipped yet.{number}"})
        messages.append({"role": "assistant", "content": f"Order {1000 + i} is cancelled and the refund is on its way to you."})
    messages.append({"role": "user", "content": ORDER_QUERY})
    return messages


@pytest.mark.slow
def test_a_private_conversation_longer_than_the_window_is_answered_locally(make_config) -> None:
    from router import Client, Reason

    messages = long_conversation(card=True)
    with Client(make_config(local={"n_ctx": 256, "history": "full"}, cloud={"preimport": False})) as client:
        assert not client._engine.local.fits(messages, 4)  # the whole conversation would not fit
        r = client.chat.completions.create(model="auto", messages=messages, max_tokens=4)
        row = list(client.traffic_log.records())[-1]
    # Privacy is still decided on the whole conversation: the card's turn is one of those dropped.
    assert (r.router.tier, r.router.fallback_from) == ("local", None)
    assert r.router.reason in (Reason.PII_MATCH, Reason.PRIVATE_CATEGORY) and "messages[3]" in r.router.detail
    assert "dropped messages[1.." in r.router.detail and "kept the system prompt and the last" in r.router.detail
    assert r.usage.prompt_tokens + 4 <= 256
    assert row.detail == r.router.detail and len(row.messages) == len(messages)  # the log keeps the whole conversation


@pytest.mark.slow
def test_only_an_impossible_fit_is_refused(make_config) -> None:
    from router import BadRequestError, Client

    messages = [{"role": "system", "content": "Answer briefly. " * 200}, {"role": "user", "content": ORDER_QUERY}]
    with Client(make_config(local={"n_ctx": 256, "history": "full"}, cloud={"preimport": False})) as client:
        with pytest.raises(BadRequestError) as info:
            client.chat.completions.create(model="local", messages=messages, max_tokens=4)
    assert info.value.code == "context_length_exceeded"


@pytest.mark.slow
def test_long_conversations_cloud_sends_a_non_private_one_to_the_cloud(make_config) -> None:
    from router import Client, Reason

    messages = long_conversation(card=False)
    with Client(make_config(local={"n_ctx": 256, "history": "full", "long_conversations": "cloud"})) as client:
        r = client.chat.completions.create(model="auto", messages=messages, max_tokens=4)
    assert (r.router.tier, r.router.reason, r.router.fallback_from) == ("cloud", Reason.LOCAL_CATEGORY, "local")
    assert r.router.fallback_reason.startswith("context") and "dropped" not in r.router.detail
    with Client(make_config(local={"n_ctx": 256, "history": "full"})) as client:  # the default, "prune": answered locally
        r = client.chat.completions.create(model="auto", messages=messages, max_tokens=4)
    assert (r.router.tier, r.router.reason) == ("local", Reason.LOCAL_CATEGORY) and "dropped messages[" in r.router.detail
