"""Chat text: flattening OpenAI message content, and the Gemma turn format shared by serving and fine-tuning.

The packaged GGUF carries no ``tokenizer.chat_template``; llama-cpp-python would then silently
fall back to the llama-2 format, and its built-in ``gemma`` format drops system messages. A model
fine-tuned on one rendering and served with another loses most of what it learned, so both sides
call this module. The BOS token is not part of the text: llama.cpp and the Hugging Face tokenizer
each add it when tokenizing.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

__all__ = [
    "END_OF_TURN",
    "START_OF_TURN",
    "STOP_SEQUENCES",
    "earlier_turns",
    "is_text_only",
    "last_user_text",
    "logged_query",
    "message_text",
    "render_prompt",
    "render_turn",
    "user_turns",
]

START_OF_TURN = "<start_of_turn>"
END_OF_TURN = "<end_of_turn>"
STOP_SEQUENCES: tuple[str, ...] = (END_OF_TURN,)

# Gemma knows only "user" and "model"; system and developer instructions are folded into the
# first user turn, the convention of Gemma's own template.
_ROLE_NAMES = {"user": "user", "assistant": "model"}
_INSTRUCTION_ROLES = frozenset({"system", "developer"})


def message_text(content: Any) -> str:
    """The text of OpenAI message content (a string, None, or a list of parts); non-text parts are skipped."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    return "".join(
        str(part.get("text", "")) for part in content if isinstance(part, Mapping) and part.get("type") == "text"
    )


def is_text_only(content: Any) -> bool:
    """Whether ``content`` is a string or a list of text parts only (what the local model can read)."""
    if isinstance(content, str):
        return True
    return isinstance(content, (list, tuple)) and all(
        isinstance(part, Mapping) and part.get("type") == "text" for part in content
    )


def last_user_text(messages: Sequence[Mapping[str, Any]]) -> str:
    """The text of the last user message: what a query is classified and judged by."""
    for message in reversed(messages):
        if message.get("role") == "user":
            return message_text(message.get("content"))
    return ""


def user_turns(messages: Sequence[Mapping[str, Any]]) -> list[tuple[int, str]]:
    """``(message index, text)`` of every user message, oldest first: the turns a conversation's
    privacy is decided on (a conversation is as private as its most private turn)."""
    return [(i, message_text(m.get("content"))) for i, m in enumerate(messages) if m.get("role") == "user"]


def earlier_turns(messages: Sequence[Mapping[str, Any]]) -> list[str]:
    """The texts of the messages before the last user message: what an answer must not merely repeat."""
    last = max((i for i, m in enumerate(messages) if m.get("role") == "user"), default=len(messages))
    return [text for m in messages[:last] if (text := message_text(m.get("content"))).strip()]


def topic_messages(messages: Sequence[Mapping[str, Any]], start: int) -> list[dict[str, Any]]:
    """A conversation as one question about its current topic: the instructions (system and
    developer messages) and the user turns from message ``start`` on (the turn that opened the
    topic), joined into one user message; the answers in between are left out.

    For a small local model trained on single questions: given its own earlier answer it tends to
    replay it, and a follow-up such as "ok do it" means nothing without the question it follows.
    """
    instructions = [dict(m) for m in messages if m.get("role") in ("system", "developer")]
    texts = [message_text(m.get("content")) for m in messages[start:] if m.get("role") == "user"]
    return [*instructions, {"role": "user", "content": "\n".join(t.strip() for t in texts if t.strip())}]


def logged_query(messages: Any) -> str | None:
    """The query of a logged conversation (its last user message, stripped), or None when there is
    none or a user message is not text only (images, tool parts): discovery, dataset labelling and
    category apply read logged rows by this one rule."""
    if not isinstance(messages, Sequence) or not messages:
        return None
    if not all(isinstance(m, Mapping) for m in messages):
        return None
    if any(not is_text_only(m.get("content")) for m in messages if m.get("role") == "user"):
        return None
    return last_user_text(messages).strip() or None


def render_turn(role: str, text: str) -> str:
    """One complete turn, ``<start_of_turn>{role}\\n{text}<end_of_turn>\\n``."""
    return f"{START_OF_TURN}{_ROLE_NAMES[role]}\n{text.strip()}{END_OF_TURN}\n"


def render_prompt(messages: Sequence[Mapping[str, Any]], *, add_generation_prompt: bool = True) -> str:
    """Render a chat as Gemma turns; with ``add_generation_prompt`` it ends ready for the answer."""
    instructions: list[str] = []
    turns: list[str] = []
    for message in messages:
        role = message["role"]
        text = message_text(message.get("content"))
        if role in _INSTRUCTION_ROLES:
            instructions.append(text.strip())
            continue
        if role == "user" and instructions and not turns:
            text = "\n\n".join([*instructions, text.strip()])
            instructions = []
        turns.append(render_turn(role, text))
    if instructions:  # instructions with no user turn after them still reach the model
        turns.insert(0, render_turn("user", "\n\n".join(instructions)))
    prompt = "".join(turns)
    if add_generation_prompt:
        prompt += f"{START_OF_TURN}model\n"
    return prompt
