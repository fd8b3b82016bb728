from __future__ import annotations

from hybrid_common.chat import is_text_only, last_user_text, message_text, render_prompt
from hybrid_common.guard import DegenerationGuard


def test_repetition_loop_detected_only_when_real() -> None:
    guard = DegenerationGuard(min_span=48)
    assert guard.check_partial("Your order ships tomorrow. Your order") is None
    assert guard.check_partial("Your order ships tomorrow. " * 2) == "repetition loop"  # a span said again at once
    guard = DegenerationGuard(min_span=48)
    assert guard.check_partial("Hello! I can help with that order. Please share the number.") is None
    assert guard.check_partial("ab" + "la " * 20) == "repetition loop"


# What the untuned base model served in `make demo` (read from its traffic log), and what it must not flag.
DEGENERATE = [
    ("how do I use the gold profile?", "how do I use the gold profile? mendatanguser\nhow do I use the gold profile? mendatanguser\nhow do I use the gol", "echoed the question"),
    ("ido not know what to do to get my invoice #12588", "I am not sure what to do to get my invoice #12588 mendatang\nI am not sure what to do to get my invoice #1", "echoed the question"),
    ("what about shipments to the UK?", "We ship to the United Kingdom (UK) (UK) (UK) (UK)", "repetition loop"),
    ("open Freemium account", "Sure thing\n経営者\n経営者\n経営者", "drifted into cjk script"),
    ("where is my refund", "Here is the answer |\n|\n|\n|\n|\n|\n|\n|", "repetition loop"),  # one separator: a loop
    ("where is my refund", "Here is the answer | - | = | + | * | ~ | # | - |", "separator run"),  # mixed ones
    ("help with a delivery", "assistance with delivery 00123842 is here\nthe delivery 00123842 is here now\nassistance with delivery 00123842 is here\n"
     "the delivery 00123842 is here\nassistance with delivery 00123842 is there\nthe delivery 00123842 is here", "repetitive answer"),
    ("where is my order?", "   ", "empty answer"),
]
SOUND = [
    ("check the early exit fee", "To check the early exit fee, please follow these instructions:\n\n1. Sign in to your {{Website Name}} account.\n"
     "2. Go to the {{Account Settings}} section.\n3. Look for {{Early Exit Fee}} under {{Account Settings}}."),
    ("where is my order?", "Your order {{Order Number}} left our warehouse today. You can track order {{Order Number}} on {{Website URL}}; "
     "if order {{Order Number}} has not arrived in five days, contact {{Customer Support}} and quote order {{Order Number}}."),
    ("¿dónde está mi pedido?", "Su pedido está en camino y llegará pronto."),
    ("was I charged twice?", "We refunded card 4111 1111 1111 1111 and order 1000000 for $1,000,000.00 today."),
    ("注文はどこですか", "ご注文は発送済みです。"),
]


def test_guard_catches_what_the_base_model_served() -> None:
    for question, answer, problem in DEGENERATE:
        assert DegenerationGuard(question=question).check_text(answer) == problem, (question, answer)


def test_guard_passes_well_formed_answers_with_repeated_phrases_and_placeholders() -> None:
    for question, answer in SOUND:
        assert DegenerationGuard(question=question).check_text(answer) is None, (question, answer)


def test_empty_and_echo() -> None:
    assert DegenerationGuard().check_final("   ") == "empty answer"
    assert DegenerationGuard(question="Where is my order?").check_final("where is my order") == "echoed the question"
    assert DegenerationGuard(question="Where is my order?", reject_echo=False).check_final("where is my order") is None
    # The echo is judged once the opening is as long as the question: not before.
    early = DegenerationGuard(question="where can I find my invoice from March")
    assert early.check_partial("where can I find") is None
    assert early.check_partial("where can I find my invoice from March mendatanguser\nwhere") == "echoed the question"
    assert DegenerationGuard(question="Where is my order?").check_final("It ships today.") is None


def test_gemma_turns_with_system_and_history() -> None:
    prompt = render_prompt(
        [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello!"},
            {"role": "user", "content": [{"type": "text", "text": "Where is "}, {"type": "text", "text": "my order?"}]},
        ]
    )
    assert prompt == (
        "<start_of_turn>user\nBe brief.\n\nHi<end_of_turn>\n"
        "<start_of_turn>model\nHello!<end_of_turn>\n"
        "<start_of_turn>user\nWhere is my order?<end_of_turn>\n"
        "<start_of_turn>model\n"
    )
    assert "<bos>" not in prompt  # the tokenizer adds it


def test_system_only_conversation_still_reaches_the_model() -> None:
    assert render_prompt([{"role": "system", "content": "Say hi"}]).startswith("<start_of_turn>user\nSay hi")


def test_message_text_flattens_text_parts_and_skips_the_rest() -> None:
    parts = [{"type": "text", "text": "Where is "}, {"type": "image_url", "image_url": {"url": "x"}}, {"type": "text", "text": "it?"}]
    assert message_text(parts) == "Where is it?"
    assert message_text(None) == "" and message_text("plain") == "plain"
    assert message_text(["not a part", {"type": "text", "text": "ok"}]) == "ok"
    assert is_text_only("plain") and is_text_only([{"type": "text", "text": "a"}])
    assert not is_text_only(parts) and not is_text_only(None)


def test_last_user_text_is_what_routing_classifies() -> None:
    messages = [
        {"role": "user", "content": "first"},
        {"role": "assistant", "content": "answer"},
        {"role": "user", "content": [{"type": "text", "text": "second"}]},
        {"role": "assistant", "content": "pending"},
    ]
    assert last_user_text(messages) == "second"
    assert last_user_text([{"role": "system", "content": "be brief"}]) == ""


def test_check_text_is_the_streaming_checks_in_one_go() -> None:
    assert DegenerationGuard(min_span=12).check_text("fine, " + "ab" * 6) == "repetition loop"
    assert DegenerationGuard(question="Where is my order?").check_text("where is my order") == "echoed the question"
    assert DegenerationGuard().check_text("Your order left the warehouse today.") is None


def test_logged_query_is_the_last_text_user_message_or_none() -> None:
    from hybrid_common.chat import logged_query

    assert logged_query([{"role": "user", "content": " where is my order? "}]) == "where is my order?"
    assert logged_query([{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]) is None
    assert logged_query([{"role": "system", "content": "be brief"}]) is None
    assert logged_query(None) is None and logged_query(["not a message"]) is None


def test_an_answer_that_replays_an_earlier_turn_is_an_echo() -> None:
    """Read from the traffic log of a conversation replay: the base model continued by repeating the
    previous answer or question with stray tokens; the question alone did not catch it."""
    handoff = "I can't answer this one automatically. A member of our team will get back to you."
    earlier = ["what payment methods do you accept?", handoff]
    assert DegenerationGuard(question="can I do it from my phone?").check_text(handoff + "łę\nibley\n") is None
    guard = DegenerationGuard(question="can I do it from my phone?", earlier=earlier)
    assert guard.check_text(handoff + "łę\nibley\n") == "echoed an earlier turn"
    replay = "what payment methods do you accept mendatang\nI can't"
    assert DegenerationGuard(question="and is there a fee?", earlier=earlier).check_text(replay) == "echoed an earlier turn"
    sound = "I understand that you are wondering about fees. Card payments have no fee; bank transfers cost 1 euro."
    opener = "I understand that you want to know the payment methods. We accept cards and bank transfers."
    assert DegenerationGuard(question="and is there a fee?", earlier=["what payment methods?", opener]).check_text(sound) is None


def test_an_echo_cut_short_by_the_token_cap_is_an_echo() -> None:
    question = "my card 4539 1433 3776 1746 was charged twice for the same account upgrade"
    assert DegenerationGuard(question=question).check_text("my card 4539 1433 3776 1746 was charged") == "echoed the question"
    assert DegenerationGuard(question=question).check_text("my card was charged twice? Let me check") is None
    assert DegenerationGuard(question="where is my order?").check_text("Your order ships today.") is None


def test_earlier_turns_are_the_messages_before_the_last_user_message() -> None:
    from hybrid_common.chat import earlier_turns

    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"},
                {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "where is my order?"}]  # fmt: skip
    assert earlier_turns(messages) == ["Be brief.", "hi", "Hello!"] and earlier_turns(messages[:2]) == ["Be brief."]


def _settles_at(guard: DegenerationGuard, answer: str) -> int | None:
    """Words of ``answer`` after which the guard has ruled an echo out (None: never before the end)."""
    import re

    for count, match in enumerate(re.finditer(r"\S+\s+", answer), start=1):
        if guard.opening_settled(answer[: match.end()]):
            return count
    return None


def test_opening_settles_within_a_few_words_of_an_answer_that_is_not_an_echo() -> None:
    question = "how do I change the shipping address of my order?"
    answer = "I'm sorry to hear about the mix-up. To update the address, go to Orders and choose Edit."
    assert _settles_at(DegenerationGuard(question=question), answer) == 4  # "I'm sorry to hear"
    # A guard without echo sources has nothing to wait for.
    assert DegenerationGuard(question="").opening_settled("")
    assert DegenerationGuard(question=question, reject_echo=False).opening_settled("")


def test_an_opening_with_the_questions_words_is_not_settled_until_judged() -> None:
    question = "how do I change the shipping address of my order?"
    guard = DegenerationGuard(question=question)
    echo = "how do I change the shipping address of my order mendatanguser how do I change"
    assert _settles_at(guard, echo) is None
    assert guard.check_text(echo) == "echoed the question"
    # A word cut by a piece boundary is not judged: "sh" may still become "shipping".
    assert not DegenerationGuard(question="shipping address").opening_settled("sh")


def test_a_settled_opening_never_becomes_an_echo_whatever_follows() -> None:
    """The early verdict must agree with the full one: after the point where the guard says settled, the
    most echo-like continuations (the source's words, from every offset, cut at every length) never make
    the check find an echo."""
    questions = [
        "where is my order",
        "how do I change the shipping address of my order?",
        "I want to cancel my order",
        "can you help me download the invoice from last month please",
        "refund",
        "what are the fees for an early termination of the contract, and how do I pay them?",
    ]
    openings = ["Sure, ", "I want to ", "I ", "To cancel my order ", "where ", "my order ", "Thanks for asking, the ",
                "how do I change the ", "where is it ", "Hello there friend ", "download the invoice "]  # fmt: skip
    checked = 0
    for question in questions:
        source = question.rstrip("?").split()
        for opening in openings:
            for extra in range(len(source) + 1):
                prefix = opening + " ".join(source[:extra]) + (" " if extra else "")
                if not DegenerationGuard(question=question).opening_settled(prefix):
                    continue
                for start in range(len(source)):
                    for stop in range(start + 1, len(source) + 3):
                        answer = prefix + " ".join((source + ["again", "now"])[start:stop])
                        verdict = DegenerationGuard(question=question).check_text(answer)
                        assert verdict != "echoed the question", (question, prefix, answer)
                        checked += 1
    assert checked > 1000


def test_an_opening_that_differs_from_the_questions_first_words_is_released_at_once() -> None:
    question = "where is my order?"
    guard = DegenerationGuard(question=question)
    assert not guard.opening_differs("I")  # a word still being written is not judged
    assert guard.opening_differs("I'm ")  # "i'm" is neither "where" nor "is"
    # An opening with the question's first word waits for its second; one that follows it waits for the full check.
    assert not guard.opening_differs("Where ") and guard.opening_differs("Where can ")
    assert not guard.opening_differs("where is ") and not guard.opening_settled("where is ")
    # Echoes copy with small slips and may drop the first word: those openings wait too.
    assert not guard.opening_differs("wher is ") and not guard.opening_differs("is my ")
    assert not DegenerationGuard(question="play audiobook where we left off").opening_differs("play audiobooks ")
    # An earlier turn is a source too: an answer repeating the last one's opening waits for the full check.
    earlier = DegenerationGuard(question=question, earlier=["I'm sorry, your parcel was delayed in transit"])
    assert not earlier.opening_differs("I'm sorry ") and earlier.opening_differs("Your ")
    assert DegenerationGuard(question=question, reject_echo=False).opening_differs("")


def test_a_word_still_being_written_is_released_once_no_completion_could_open_an_echo() -> None:
    guard = DegenerationGuard(question="where is my order?")
    assert guard.opening_differs("Cert")  # no "cert..." is "where" or "is" with one character changed
    assert not guard.opening_differs("I")  # "i..." could still become "ihere", one letter off "where"
    assert not guard.opening_differs("Wh") and not guard.opening_differs("Whre")  # "where" with a letter dropped
    assert not guard.opening_differs("Where i") and guard.opening_differs("Where c")  # the second word likewise
    # Two-letter source words take no slips: "ix" cannot become "is", but "i" still can.
    assert guard.opening_differs("ix") and not guard.opening_differs("is")
    # Every completion the rule allows is checked against the rule itself, letter by letter.
    for partial in ("Wher", "Whe", "Hwere", "Ahere", "Wxere"):
        grows_into_echo = any(not guard.opening_differs(partial + rest + " ") for rest in ("", "e", "re", "ere", "s"))
        assert guard.opening_differs(partial) is not grows_into_echo, partial


def test_an_echo_that_differs_at_its_opening_is_still_caught() -> None:
    """The early release trusts that an echo starts where its source starts; one that does not is still judged."""
    question = "assistance canceling my company newsletter subscription"
    echo = "user\nassistance canceling my company newsletter subscription mendatang\npaying my bill"
    guard = DegenerationGuard(question=question)
    assert guard.opening_differs("user\nassistance ")
    assert guard.check_text(echo) == "echoed the question"


ALTERED = "altered a number from the question"


def test_a_number_the_caller_gave_must_come_back_unaltered() -> None:
    # Bitext's own reference answers miscopy its order number (3707955617 as 370795561790), and a
    # model tuned on them does the same.
    order = "I need assistance cancelling purchase 3707955617"
    assert DegenerationGuard(question=order).check_text("Cancelling purchase 370795561790 now, as you asked.") == ALTERED
    assert DegenerationGuard(question=order).check_text("Purchase 3707955671 is being cancelled, as you asked.") == ALTERED
    assert DegenerationGuard(question="refunding$3").check_text("You will get a refund of $3000 within a week.") == ALTERED
    earlier = DegenerationGuard(question="ok do it", earlier=[order, "Sure, I can help."])
    assert earlier.check_text("Purchase 370795561790 is now cancelled.") == ALTERED
    for question, answer in [
        (order, "Purchase 3707955617 is cancelled within 24 hours: 1. Sign in. 2. Open your orders."),
        ("refunding$3", "Your $3 refund arrives within 30 days."),
        ("what is the fee for 3 items?", "The fee is $30 and delivery takes 5 days."),
        ("I need the invoice for 2023", "Invoices from 2023 and 2024 are under Billing."),
        ("where is my order?", "Orders ship within 3 to 5 days; call 18005550199 if not."),
    ]:
        assert DegenerationGuard(question=question).check_text(answer) is None, answer


def test_a_number_still_being_written_is_judged_once_it_ends() -> None:
    guard = DegenerationGuard(question="where is order 3707955617?", reject_echo=False)
    assert guard.check_partial("Order 37079556") is None
    assert guard.check_partial("Order 370795561790") is None  # the digits may still change what it is
    assert guard.check_partial("Order 370795561790 left") == ALTERED
    finished = DegenerationGuard(question="where is order 3707955617?", reject_echo=False)
    assert finished.check_final("Order 370795561790") == ALTERED
