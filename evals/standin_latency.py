"""How long the stand-in cloud takes to answer in recorded-answer mode, so cloud latency means something.

A recorded answer is ready at once (~9 ms), which no provider is: without a delay, every latency
comparison between the local and the cloud tier flatters the cloud. :class:`LatencyModel` gives
each request a time to first token and an output speed, each scaled by a log-normal factor of its own;
:func:`chunk_offsets` turns them into the moment each streamed chunk is due. The stand-in waits with
``asyncio.sleep``, so concurrent requests overlap as they do at a real provider.
"""

from __future__ import annotations

import math
import random
from typing import NamedTuple

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["TOKENS_PER_WORD", "LatencyModel", "RequestTiming", "chunk_offsets", "estimate_tokens"]

# OpenAI's rule of thumb (a token is about 3/4 of an English word); the recorded answers are English.
TOKENS_PER_WORD = 1.3


class RequestTiming(NamedTuple):
    """One request's draw: seconds to the first token, then output tokens per second."""

    ttft_s: float
    tokens_per_s: float

    def total_s(self, tokens: float, max_tokens: int | None = None) -> float:
        """When the last token has arrived: TTFT plus the tokens, at most ``max_tokens``, at the output speed."""
        return self.ttft_s + min(tokens, math.inf if max_tokens is None else max_tokens) / self.tokens_per_s


class LatencyModel(BaseModel):
    """A provider's latency: time to first token, then a steady output speed, both jittered per request.

    The defaults are OpenAI gpt-4o-mini as Artificial Analysis reported it in 2025 (independent
    provider benchmarks, median figures): about 0.45 s to the first token and about 75 output
    tokens/s. Artificial Analysis measures output speed after the first chunk, which is how
    :meth:`RequestTiming.total_s` uses it. Every field is configurable (``StandinCloud(latency=…)``,
    or ``--ttft-s``, ``--tokens-per-s``, ``--jitter``, ``--latency-seed``); :meth:`none` turns the
    delay off for tests that only check content.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    enabled: bool = Field(True, description="False answers at once (the stand-in's behaviour before this model)")
    ttft_s: float = Field(0.45, ge=0.0, description="median seconds to the first token")
    tokens_per_s: float = Field(75.0, gt=0.0, description="median output tokens per second after the first token")
    jitter: float = Field(0.25, ge=0.0, description="sigma of the log-normal factor drawn, independently, for TTFT and speed")
    seed: int = Field(0, description="seed of the per-app random draws, so a run's delays are reproducible")

    @classmethod
    def none(cls) -> LatencyModel:
        """No delay at all: for tests that check what is answered, not when."""
        return cls(enabled=False)

    def draw(self, rng: random.Random) -> RequestTiming:
        """One request's timing; a factor of median 1 keeps the configured figures as the medians."""
        if not self.enabled:
            return RequestTiming(0.0, math.inf)
        return RequestTiming(self.ttft_s * rng.lognormvariate(0.0, self.jitter), self.tokens_per_s * rng.lognormvariate(0.0, self.jitter))


def estimate_tokens(text: str) -> float:
    """Output tokens of ``text`` without a tokenizer: words times :data:`TOKENS_PER_WORD`."""
    return len(text.split()) * TOKENS_PER_WORD


def chunk_offsets(timing: RequestTiming, pieces: list[str], max_tokens: int | None = None) -> list[float]:
    """Seconds after the request at which each streamed piece is due, then the closing chunk.

    The first piece comes at TTFT; each later one when the tokens before it have been generated,
    and the closing chunk at :meth:`RequestTiming.total_s`, the time a non-streamed answer takes.
    Pieces past ``max_tokens`` are due with the closing chunk, when a capped provider would stop.
    """
    offsets, tokens = [], 0.0
    for piece in pieces:
        offsets.append(timing.total_s(tokens, max_tokens))
        tokens += estimate_tokens(piece)
    return [*offsets, timing.total_s(tokens, max_tokens)]
