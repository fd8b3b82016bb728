"""Each user turn of a conversation classified once: earlier turns come from a small cache.

A conversation is as private as its most private turn, so every user turn is classified, not
only the last. Callers resend the whole history with every request (the API is stateless), so
without a cache a ten-turn conversation would pay ten encoder runs on its tenth request; keyed by
the classifier version and a hash of the turn's text, the earlier turns are found here and only
new turns reach the encoder, in one call.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

__all__ = ["TurnClassifications"]


class TurnClassifications:
    """An LRU of ``(classifier, turn text) -> Prediction`` in front of ``classify_many``."""

    def __init__(self, size: int = 4096) -> None:
        self._size = size
        self._entries: OrderedDict[tuple[int, str | None, str], Any] = OrderedDict()
        self._lock = threading.Lock()
        self.encoded = 0
        """Turns that went to the encoder (the rest came from the cache): for tests and benchmarks."""

    def classify(self, classifier: Any, version: str | None, texts: Sequence[str]) -> list[Any]:
        """One prediction per text, in order; only texts not seen with this classifier are encoded."""
        keys = [(id(classifier), version, hashlib.sha256(t.encode("utf-8", "surrogatepass")).hexdigest()) for t in texts]
        found: dict[int, Any] = {}
        with self._lock:
            for i, key in enumerate(keys):
                if (hit := self._entries.get(key)) is not None:
                    self._entries.move_to_end(key)
                    found[i] = hit
        missing = [i for i in range(len(texts)) if i not in found]
        if missing:
            fresh = classifier.classify_many([texts[i] for i in missing])
            with self._lock:
                self.encoded += len(missing)
                for i, prediction in zip(missing, fresh, strict=True):
                    found[i] = prediction
                    self._entries[keys[i]] = prediction
                while len(self._entries) > self._size:
                    self._entries.popitem(last=False)
        return [found[i] for i in range(len(texts))]
