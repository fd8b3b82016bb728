"""Which earlier answers of a conversation came from the cloud, known from the conversation itself.

The chat API is stateless: a caller resends the whole conversation, assistant answers included,
with every turn, and sends no session id. So the router remembers a fingerprint (a hash of the
normalised text) of each cloud answer it served for a turn the local tier could not serve; when a
later request's history contains one of them, that turn was the cloud's. No session store, and a
caller who edits or invents an answer only loses stickiness (it can never move a turn *to* the
local tier, nor out of it when private: privacy is decided before this). Fingerprints live in this
process; behind several replicas a conversation is sticky where its earlier turn was answered.
"""

from __future__ import annotations

import hashlib
import re
import threading
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from typing import Any

from hybrid_common.chat import message_text

__all__ = ["CloudAnswers"]

_SPACE = re.compile(r"\s+")


def _fingerprint(text: str) -> str:
    normalised = _SPACE.sub(" ", text).strip()
    return hashlib.blake2b(normalised.encode("utf-8", "surrogatepass"), digest_size=16).hexdigest()


class CloudAnswers:
    """An LRU of fingerprints of cloud answers given for turns the local tier could not serve."""

    def __init__(self, size: int) -> None:
        self._size = size
        self._seen: OrderedDict[str, None] = OrderedDict()
        self._lock = threading.Lock()

    def remember(self, answer: str) -> None:
        if self._size <= 0 or not answer.strip():
            return
        key = _fingerprint(answer)
        with self._lock:
            self._seen[key] = None
            self._seen.move_to_end(key)
            while len(self._seen) > self._size:
                self._seen.popitem(last=False)

    def first_in(self, messages: Sequence[Mapping[str, Any]], *, after: int, before: int) -> int | None:
        """Index of the first assistant message in ``messages[after:before]`` that the cloud answered, or None."""
        if self._size <= 0:
            return None
        for index in range(max(0, after), min(before, len(messages))):
            message = messages[index]
            if message.get("role") != "assistant":
                continue
            text = message_text(message.get("content"))
            if not text.strip():
                continue
            key = _fingerprint(text)
            with self._lock:
                if key in self._seen:
                    self._seen.move_to_end(key)
                    return index
        return None
