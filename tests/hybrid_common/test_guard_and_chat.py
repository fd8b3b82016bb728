from __future__ import annotations

from hybrid_common.chat import is_text_only, last_user_text, message_text, render_prompt
from hybrid_common.guard import DegenerationGuard


def test_repetition_loop_detected_only_when_real() -> None:
    guard = DegenerationGuard(min_span=48)
    assert guard.check_partial("Your order ships tomorrow. " * 2) is None  # said twice: not yet a loop
    assert guard.check_partial("Your order ships tomorrow. " * 3) == "repetition loop"
    guard = DegenerationGuard(min_span=48)
    assert guard.check_partial("Hello! I can help with that order. Please share the number.") is None
    assert guard.check_partial("ab" + "la " * 20) == "repetition loop"


def test_empty_and_echo() -> None:
    assert DegenerationGuard().check_final("   ") == "empty answer"
    assert DegenerationGuard(question="Where is my order?").check_final("where is my order") == "echoed the question"
    assert DegenerationGuard(question="Where is my order?", reject_echo=False).check_final("where is my order") is None
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
