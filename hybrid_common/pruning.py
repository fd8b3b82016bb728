"""Fit a long conversation into the local context window: keep the instructions and the latest turns.

A conversation longer than the local window used to leave the local tier (or, private, be refused).
:func:`prune_to_fit` makes the prompt the local model is given instead:

* every system / developer message is kept, in its place;
* the oldest other messages are dropped first, a whole exchange at a time: the kept history
  always starts with a user turn (never with an answer whose question is gone);
* the last user message, and anything after it, is always kept;
* only when even the instructions and the last user message do not fit is that message cut
  from its start (its end, usually the actual question, is kept). The instructions are never
  cut: they are the operator's, and a model that lost them may answer out of policy;
* optionally (``summary_chars``), the dropped user turns are quoted in a short note. Extractive,
  with no model call: the packaged local model is a 270M base model, and a summary it wrote would
  be worse than the user's own words. The note is a ``system`` message right after the leading
  instructions (first when there are none: the Gemma rendering folds it into the first kept user
  turn anyway, and the user's own message, which the degeneration guard checks the answer
  against, stays as sent). History has priority: the note is added only if it still fits.

``fits`` is the backend's check (it tokenizes the rendered prompt), so it is called
``O(log n)`` times: a binary search over where the kept history starts, then, only if needed,
over how much of the last user message is kept.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from hybrid_common.chat import message_text

__all__ = ["Pruned", "prune_to_fit"]

_INSTRUCTION_ROLES = frozenset({"system", "developer"})
_QUOTE_CHARS = 120  # each dropped user turn is quoted by its start, up to this many characters
_SUMMARY_HEAD = "Earlier in this conversation (not shown) the user asked: "
_CUT_MARK = "…"

Messages = Sequence[Mapping[str, Any]]


@dataclass(frozen=True)
class Pruned:
    """The messages to generate from, and what was left out to get them."""

    messages: tuple[Mapping[str, Any], ...]
    total: int
    """How many messages the conversation had."""
    dropped: tuple[int, ...] = ()
    """Indices (in the original conversation) of the messages left out."""
    summary: str | None = None
    """The note quoting the dropped user turns, when one was asked for and fitted."""
    cut_chars: int = 0
    """Characters cut from the start of the last user message (the last resort)."""

    @property
    def changed(self) -> bool:
        return bool(self.dropped or self.cut_chars)

    @property
    def detail(self) -> str:
        """What was left out, for the response's ``router.detail`` and the log ("" when nothing was)."""
        parts = []
        if self.dropped:
            kept = self.total - len(self.dropped)
            instructions = sum(1 for m in self.messages if m.get("role") in _INSTRUCTION_ROLES) - (self.summary is not None)
            recent = kept - instructions
            parts.append(f"dropped messages[{_ranges(self.dropped)}] ({len(self.dropped)} of {self.total}) to fit the local window")
            last = "the last message" if recent == 1 else f"the last {recent} messages"
            parts.append(f"kept {'the system prompt and ' if instructions else ''}{last}")
        if self.cut_chars:
            where = "" if self.dropped else " to fit the local window"
            parts.append(f"cut the first {self.cut_chars} characters of the last user message{where} (its end is kept)")
        if self.summary is not None:
            parts.append("quoted the dropped user turns in a system note")
        return "; ".join(parts)


def prune_to_fit(messages: Messages, fits: Callable[[Messages], bool], *, summary_chars: int = 0) -> Pruned | None:
    """The longest recent part of ``messages`` that ``fits``, with every instruction kept.

    Returns the conversation unchanged (``Pruned.changed`` false) when it fits as it is, and
    ``None`` when nothing can fit: not even the instructions with the last few characters of the
    last user message (or there is no user message to cut).
    """
    total = len(messages)
    if fits(messages):
        return Pruned(tuple(messages), total)
    turns = [i for i, m in enumerate(messages) if m.get("role") not in _INSTRUCTION_ROLES]
    users = [i for i in turns if messages[i].get("role") == "user"]
    if not users:
        return None
    # Where the kept history may start: the first message (keep all), or any user turn up to the last.
    starts = sorted({turns[0], *users})

    def keeping(start: int) -> list[Mapping[str, Any]]:
        return [m for i, m in enumerate(messages) if i >= start or messages[i].get("role") in _INSTRUCTION_ROLES]

    last = users[-1]
    if len(starts) > 1 and fits(keeping(last)):  # one start only: keeping(last) is the whole conversation
        low, high = 0, len(starts) - 1  # starts[low] does not fit (checked above), starts[high] does
        while high - low > 1:
            middle = (low + high) // 2
            if fits(keeping(starts[middle])):
                high = middle
            else:
                low = middle
        start, cut = starts[high], 0
        kept = keeping(start)
    else:
        start = last
        found = _cut_last_user(messages, last, keeping(last), fits)
        if found is None:
            return None
        kept, cut = found
    dropped = tuple(i for i in turns if i < start)
    asked = [message_text(messages[i].get("content")) for i in dropped if messages[i].get("role") == "user"]
    summary = _summary(asked, summary_chars)
    if summary is not None:
        at = next((n for n, m in enumerate(kept) if m.get("role") not in _INSTRUCTION_ROLES), len(kept))
        noted = [*kept[:at], {"role": "system", "content": summary}, *kept[at:]]
        if fits(noted):
            kept = noted
        else:
            summary = None
    return Pruned(tuple(kept), total, dropped, summary, cut)


def _cut_last_user(
    messages: Messages, last: int, kept: list[Mapping[str, Any]], fits: Callable[[Messages], bool]
) -> tuple[list[Mapping[str, Any]], int] | None:
    """``kept`` with the last user message cut to its longest end that fits, and the characters cut."""
    text = message_text(messages[last].get("content"))
    at = next(n for n, m in enumerate(kept) if m is messages[last])

    def ending(n: int) -> list[Mapping[str, Any]]:
        shortened = {**messages[last], "content": _CUT_MARK + text[len(text) - n :].lstrip()}
        return [*kept[:at], shortened, *kept[at + 1 :]]

    if not text or not fits(ending(1)):
        return None
    low, high = 1, len(text)  # keeping the last `low` characters fits, all `high` of them does not
    while high - low > 1:
        middle = (low + high) // 2
        if fits(ending(middle)):
            low = middle
        else:
            high = middle
    return ending(low), len(text) - low


def _summary(asked: list[str], limit: int) -> str | None:
    """A note quoting the dropped user turns (the most recent ones that fit in ``limit`` characters)."""
    quotes = [_quote(text) for text in asked if text.strip()]
    if limit <= 0 or not quotes:
        return None
    chosen: list[str] = []
    for quote in reversed(quotes):
        if len(_note([quote, *chosen])) > limit:
            break
        chosen.insert(0, quote)
    if not chosen:  # not even one whole quote: the most recent one, shortened to what is left
        room = limit - len(_note([""]))
        if room < 20:
            return None
        chosen = [quotes[-1][: room - 1].rstrip() + _CUT_MARK]
    return _note(chosen)


def _quote(text: str) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= _QUOTE_CHARS else flat[: _QUOTE_CHARS - 1].rstrip() + _CUT_MARK


def _note(quotes: list[str]) -> str:
    return _SUMMARY_HEAD + "; ".join(f'"{q}"' for q in quotes) + "."


def _ranges(indices: Sequence[int]) -> str:
    """``1..6`` for a run, ``1..3, 5`` for runs split by a kept (instruction) message."""
    runs: list[list[int]] = []
    for i in indices:
        if runs and i == runs[-1][1] + 1:
            runs[-1][1] = i
        else:
            runs.append([i, i])
    return ", ".join(f"{a}..{b}" if b > a else str(a) for a, b in runs)
