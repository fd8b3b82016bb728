"""Detect degenerate local answers while they are generated, so they can go to the cloud instead.

Small models fail in recognisable ways: looping on a phrase, emitting nothing, or (a base model)
echoing the question back. Checking the tail of the text after each token costs microseconds,
far below a token's decode time.
"""

from __future__ import annotations

import re

__all__ = ["DegenerationGuard"]

_SPACE = re.compile(r"\s+")
_MAX_UNIT = 80  # longest repeating unit looked for, in characters


def _normalise(text: str) -> str:
    return _SPACE.sub(" ", text).strip().lower().rstrip("?.! ")


class DegenerationGuard:
    """Feed it the answer as it grows; ``problem`` names the first degeneration seen, if any."""

    def __init__(self, *, question: str = "", min_span: int = 48, reject_echo: bool = True) -> None:
        self._question = _normalise(question) if reject_echo else ""
        self._min_span = min_span
        self.problem: str | None = None

    def check_partial(self, text: str) -> str | None:
        """Check text generated so far; returns the problem once one appears."""
        if self.problem is None and len(text) >= self._min_span and _repeats_at_end(text, self._min_span):
            self.problem = "repetition loop"
        return self.problem

    def check_final(self, text: str) -> str | None:
        """Check the finished answer for what can only be judged at the end."""
        if self.problem is None:
            answer = _normalise(text)
            if not answer:
                self.problem = "empty answer"
            elif self._question and answer == self._question:
                self.problem = "echoed the question"
        return self.problem

    def check_text(self, text: str) -> str | None:
        """Judge a finished text in one go (a logged answer, a reference): every check, in serving's order."""
        return self.check_partial(text) or self.check_final(text)


def _repeats_at_end(text: str, min_span: int) -> bool:
    """True when the last ``min_span`` or more characters are one unit repeated (3+ times)."""
    for unit in range(1, min(_MAX_UNIT, len(text) // 3) + 1):
        reps = max(3, -(-min_span // unit))
        span = unit * reps
        if span > len(text):
            continue
        tail = text[-span:]
        if tail == tail[-unit:] * reps:
            return True
    return False
