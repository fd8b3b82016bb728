"""The fallback state machine: which tiers a request may try, in order, and what a failure leads to.

Pure logic, no I/O: the engine's four drivers (sync, async, sync stream, async stream) only run
the tier this machine names and report failures back, so every rule lives here once:

* a request starts on the tier its :class:`~router.policy.Decision` chose;
* a failed local answer goes to the cloud unless the request is private or forced local; a
  private one whose answer the guard rejected gets the hand-off message instead;
* a failed cloud call goes to the local tier when ``cloud.fallback_to_local`` is on, the request
  does not name its model on purpose (forced / pinned) and the local tier can serve it;
* each tier is tried at most once;
* when every tier has failed, the caller gets the cloud's error if the cloud was tried (the caller
  speaks the OpenAI API), else the local one, chained (``from``) to the other tier's failure.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from hybrid_common.errors import APIError
from router.policy import Decision
from router.types import Tier

__all__ = ["FallbackRun", "TierFailure", "fallback_plan", "stays_local"]


class TierFailure(Exception):
    """One tier could not answer: ``reason`` is what the log records, ``error`` what a caller would see."""

    def __init__(self, tier: Tier, reason: str, error: APIError, cause: BaseException | None = None) -> None:
        super().__init__(f"{tier} tier failed: {reason}")
        self.tier = tier
        self.reason = reason
        self.error = error
        self.cause = cause


def stays_local(decision: Decision) -> bool:
    """A private or ``model="local"`` request: only the local tier may answer it, even badly."""
    return decision.tier == "local" and (decision.private or decision.forced)


def fallback_plan(
    decision: Decision, *, cloud_to_local: bool, local_servable: bool, private_handoff: bool = False
) -> tuple[Tier, ...]:
    """The tiers to try, in order, for a request routed by ``decision``.

    ``local_servable``: the local tier can serve this request (no tools, images, ...).
    ``private_handoff``: a private request whose local answer failed may get the hand-off message
    (the engine allows it only for an answer the guard rejected, see :class:`FallbackRun`).
    """
    if decision.tier == "handoff":  # a private request with a configured hand-off: nothing to try
        return ("handoff",)
    if decision.tier == "local":
        if stays_local(decision):
            return ("local", "handoff") if decision.private and private_handoff else ("local",)
        return ("local", "cloud")
    if cloud_to_local and local_servable and not decision.forced:
        return ("cloud", "local")
    return ("cloud",)


def _always(tier: Tier) -> bool:
    return True


@dataclass
class FallbackRun:
    """One request's walk through its plan: iterate for the next tier, report each failure.

    ``allowed(tier)`` is asked only when a failure would move to ``tier`` (so a check that costs
    something, such as the quality gate's verdict, is paid only when a fallback happens).
    """

    plan: tuple[Tier, ...]
    allowed: Callable[[Tier], bool] = _always
    failures: list[TierFailure] = field(default_factory=list)

    def __iter__(self) -> Iterator[Tier]:
        for index, tier in enumerate(self.plan):
            if len(self.failures) != index:  # a driver moved on without a success or a reported failure
                raise RuntimeError(f"tier {self.plan[index - 1]!r} neither answered nor reported a failure")
            yield tier

    @property
    def fallback_from(self) -> Tier | None:
        """The tier that failed before the one now being tried, if any."""
        return self.failures[-1].tier if self.failures else None

    def failed(self, failure: TierFailure) -> Tier:
        """Record ``failure``; return the tier to try next, or raise the error the caller should see."""
        self.failures.append(failure)
        if len(self.failures) < len(self.plan) and self.allowed(self.plan[len(self.failures)]):
            return self.plan[len(self.failures)]
        raise self.final_error()

    def final_error(self) -> APIError:
        """The error to report once every tier has failed, its cause set to the other failure."""
        if not self.failures:
            raise RuntimeError("final_error() before any failure")  # a driver bug, never a user error
        chosen = next((f for f in self.failures if f.tier == "cloud"), self.failures[0])
        others = [f for f in self.failures if f is not chosen]
        cause = (others[-1].cause or others[-1].error) if others else chosen.cause
        if cause is not None:  # else keep the cause the backend gave (e.g. the provider's own error)
            chosen.error.__cause__ = cause
            chosen.error.__suppress_context__ = True
        return chosen.error
