"""Which recent prompts still sit in the KV memory, so a new prompt that starts the same way
(a support bot's long system prompt, an earlier turn of the same conversation) copies those
cells instead of prefilling them again.

Pure bookkeeping: the scheduler owns the sequence ids (one per cached prompt) and does the copy.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

__all__ = ["PrefixCache", "PrefixHit"]


@dataclass(frozen=True)
class PrefixHit:
    seq: int
    """The sequence id holding the cached prompt."""
    length: int
    """Leading tokens of the new prompt already in that sequence's cells."""


def _common_length(a: tuple[int, ...], b: list[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


class PrefixCache:
    """An LRU of cached prompts, one sequence id each, ``slots`` ids in all.

    A prompt is worth caching (and a hit worth taking) from ``min_tokens`` shared tokens: below
    that, prefilling is cheaper than the bookkeeping and the cells it holds.
    """

    def __init__(self, slots: list[int], *, min_tokens: int) -> None:
        self._free = list(slots)
        self._entries: OrderedDict[int, tuple[int, ...]] = OrderedDict()
        self.min_tokens = min_tokens
        self.hits = 0
        self.misses = 0
        self.reused_tokens = 0

    @property
    def cached_tokens(self) -> int:
        """KV cells the cached prompts hold (an upper bound: cells shared with live sequences count once each)."""
        return sum(len(tokens) for tokens in self._entries.values())

    def lookup(self, prompt: list[int]) -> PrefixHit | None:
        """The cached prompt sharing the longest start with ``prompt`` (at least ``min_tokens``),
        leaving one token to decode so the new sequence gets its own logits."""
        best: PrefixHit | None = None
        for seq, tokens in self._entries.items():
            length = min(_common_length(tokens, prompt), len(prompt) - 1)
            if length >= self.min_tokens and (best is None or length > best.length):
                best = PrefixHit(seq, length)
        if best is None:
            self.misses += 1
            return None
        self._entries.move_to_end(best.seq)
        self.hits += 1
        self.reused_tokens += best.length
        return best

    def covers(self, prompt: list[int]) -> bool:
        """Whether ``prompt`` (or a longer prompt starting with it) is already cached."""
        return any(len(tokens) >= len(prompt) and tokens[: len(prompt)] == tuple(prompt) for tokens in self._entries.values())

    def store(self, prompt: list[int]) -> tuple[int, int | None] | None:
        """A sequence id to cache ``prompt`` in, and the id evicted for it (its cells must be freed
        first); None when the prompt is too short or already cached."""
        if len(prompt) < self.min_tokens or self.covers(prompt):
            return None
        evicted = None
        if self._free:
            seq = self._free.pop()
        elif self._entries:
            seq, _ = self._entries.popitem(last=False)
            evicted = seq
        else:
            return None
        self._entries[seq] = tuple(prompt)
        return seq, evicted

    def evict_oldest(self) -> int | None:
        """Drop the least recently used prompt (to make KV room); its id, whose cells must be freed."""
        if not self._entries:
            return None
        seq, _ = self._entries.popitem(last=False)
        self._free.append(seq)
        return seq

    def clear(self) -> list[int]:
        """Forget every cached prompt (the adapter changed: their cells are stale); the ids to free."""
        seqs = list(self._entries)
        self._entries.clear()
        self._free.extend(seqs)
        return seqs
