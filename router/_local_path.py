"""The local tier's side of a request: admission, the prompt as the local model takes it, guarded generation.

The engine's drivers run the local tier through :meth:`LocalPath.pieces`; shadow answers
(:mod:`router._shadowing`) use the same prompt shaping and :meth:`LocalPath.start`, so a shadow is
generated as an answer would be served. Admission (:mod:`router._admission`) is consulted when a
request is planned and fed when its log row is written.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Iterator
from typing import Any

from hybrid_common.chat import earlier_turns, topic_messages
from hybrid_common.errors import APIError, APITimeoutError, BadRequestError, InternalServerError, OverloadedError
from hybrid_common.generation import guarded_pieces
from hybrid_common.guard import DegenerationGuard
from hybrid_common.pruning import Pruned, prune_to_fit
from router._admission import LocalAdmission, prompt_token_estimate
from router._exchange import Exchange
from router._fallback import stays_local
from router._request import ChatRequest
from router._sampling import ForegroundActivity
from router.backends import CloudBackend, GenerationStream, LocalBackend, LocalFailure
from router.config import RouterConfig
from router.policy import Decision
from router.types import Reason

logger = logging.getLogger("router")

__all__ = ["LocalPath"]


class LocalPath:
    """Serves requests on the local backend as configured: admitted, shaped, fitted, guarded."""

    def __init__(self, config: RouterConfig, backend: LocalBackend, cloud: CloudBackend, activity: ForegroundActivity) -> None:
        self.config = config
        self.backend = backend
        self.cloud = cloud  # prices what a local answer would have cost in the cloud
        self.activity = activity
        self.admission = LocalAdmission(config.local)
        # Which registry version answers a request (a running canary's arm); set by the engine.
        self.choose_version: Callable[[Exchange], str | None] = lambda exchange: None

    # -- admission ------------------------------------------------------------------------------

    def admit(self, exchange: Exchange) -> None:
        """A routed request the busy local tier would answer slower than its budget goes to the cloud
        now (reason ``local_busy``); private and ``model="local"`` requests always queue."""
        decision = exchange.decision
        if decision.tier != "local" or stays_local(decision):
            return
        request = exchange.request
        max_tokens = self.config.local.answer_tokens(request.params.max_tokens)
        prompt_tokens = prompt_token_estimate(request.messages)
        admit, budget, predicted = self.admission.decide(
            lambda ahead: self.backend.predicted_seconds(prompt_tokens, max_tokens, ahead=ahead),
            idle_s=self.backend.idle_seconds(prompt_tokens, max_tokens),
        )
        if admit:
            exchange.local_budget_s = budget
            exchange.local_predicted_s = predicted
            exchange.admitted_after_s = time.perf_counter() - exchange.started
            exchange.local_finish_by = time.monotonic() + budget
            exchange.admission_pending = True
            return
        exchange.decision = dataclasses.replace(
            decision, tier="cloud", reason=Reason.LOCAL_BUSY,
            detail=f"{decision.detail}; local answer predicted {predicted:.1f} s, budget {budget:.1f} s",
        )  # fmt: skip

    def handed_over(self, exchange: Exchange) -> None:
        """An admitted request reached the backend, or ended without it (a cache hit, an error)."""
        if exchange.admission_pending:
            exchange.admission_pending = False
            self.admission.handed_over()

    def observe_latency(self, exchange: Exchange) -> None:
        """Feed admission: the cloud's latency (the budget), and admitted local answers that overran."""
        self.handed_over(exchange)
        if exchange.error is not None:
            return
        seconds = time.perf_counter() - exchange.started
        if exchange.tier == "cloud" and exchange.fallback_from is None:
            self.admission.observe_cloud(seconds)
        elif exchange.tier == "local" and exchange.local_budget_s is not None:
            if self.admission.finished_local(seconds, exchange.local_budget_s):
                logger.info(
                    "request %s: its local answer took %.2f s against a budget of %.2f s (admitted %.2f s after it "
                    "arrived, predicted %s)", exchange.request_id, seconds, exchange.local_budget_s,
                    exchange.admitted_after_s or 0.0,
                    "-" if exchange.local_predicted_s is None else f"{exchange.local_predicted_s:.2f} s",
                )  # fmt: skip

    # -- the prompt -----------------------------------------------------------------------------

    def request_for_model(self, request: ChatRequest, topic_start: int | None) -> ChatRequest:
        """``request`` as the local model is given it: whole, or (``local.history = "topic"``) a later
        turn as one question about its topic (:func:`hybrid_common.chat.topic_messages`)."""
        if self.config.local.history != "topic" or topic_start is None:
            return request
        return dataclasses.replace(request, messages=topic_messages(request.messages, topic_start))

    def fit_window(self, request: ChatRequest, *, must_stay: bool) -> tuple[ChatRequest, Pruned | None]:
        """``request`` as the local model can take it: whole, or pruned to its window (:mod:`hybrid_common.pruning`).

        Raises ``LocalFailure("context")`` for a conversation the cloud should answer whole instead
        (``long_conversations = "cloud"``, or only its last message cut short would fit), and a 400
        for one that may not leave (``must_stay``: private or ``model="local"``) and cannot fit at all.
        """
        local = self.config.local
        answer_tokens = local.answer_tokens(request.params.max_tokens)

        def fits(messages: Any) -> bool:
            return self.backend.fits(messages, answer_tokens)

        prune = must_stay or local.long_conversations == "prune"
        try:
            pruned = prune_to_fit(request.messages, fits, summary_chars=local.summary_chars) if prune else None
            whole = (pruned is not None and not pruned.changed) if prune else fits(request.messages)
        except Exception as err:
            raise LocalFailure("error", f"local model unavailable: {err}") from err
        if whole:
            return request, None
        # Cutting the question itself is the last resort of a conversation that may not leave; any other goes to the cloud.
        if pruned is not None and (must_stay or not pruned.cut_chars):
            return dataclasses.replace(request, messages=list(pruned.messages)), pruned
        if must_stay:
            raise BadRequestError(
                "The conversation does not fit the local model's context window, not even its system prompt with the "
                "end of its last message, and may not go to the cloud.",
                param="messages",
                code="context_length_exceeded",
            )
        why = "; only its last message cut short would fit" if pruned is not None else ""
        raise LocalFailure("context", f"prompt longer than the local context window{why}")

    # -- generation -----------------------------------------------------------------------------

    def start(
        self, request: ChatRequest, *, deadline: float, finish_by: float | None = None, version: str | None = None
    ) -> tuple[GenerationStream, DegenerationGuard]:
        """Start generating ``request`` as served (token cap, guard): for answers and shadow answers alike."""
        local = self.config.local
        stream = self.backend.generate(
            request.messages, request.params, max_tokens=local.answer_tokens(request.params.max_tokens), deadline=deadline,
            finish_by=finish_by, version=version,
        )  # fmt: skip
        return stream, local.new_guard(request.query, earlier_turns(request.messages))

    def pieces(self, exchange: Exchange) -> Iterator[str]:
        """Generate locally, guarded; raises LocalFailure before or while yielding text.

        Marked as foreground work from the start: a shadow answer holding the model stops within
        one token and lets this request have it.
        """
        with self.activity.running():
            yield from self._guarded_pieces(exchange)

    def _guarded_pieces(self, exchange: Exchange) -> Iterator[str]:
        self.backend.refresh()
        # A long conversation is answered from its pruned copy (the guard judges against that one too);
        # the log keeps the whole conversation, and the detail says what the local model did not see.
        local_request = self.request_for_model(exchange.request, exchange.topic_start)
        request, pruned = self.fit_window(local_request, must_stay=stays_local(exchange.decision))
        exchange.pruned = pruned.detail if pruned is not None else None
        # With a registry the backend knows which promoted version it loaded; else the config labels it.
        local = self.config.local
        adapter_version = self.backend.adapter_version if local.followed_registry else local.adapter_version
        version = self.choose_version(exchange) if local.followed_registry else None
        exchange.serve_with("local", self.backend.name, self.backend.model_name, version or adapter_version)
        try:
            stream, guard = self.start(request, deadline=self._deadline(request), finish_by=exchange.local_finish_by, version=version)
        finally:
            self.handed_over(exchange)
        # A stream that may fall back (or hand off) holds its opening back until the guard has judged it.
        fallible = not stays_local(exchange.decision) or self.hands_off_private(exchange.decision)
        hold_back = local.hold_back_for(request.query) if request.stream and fallible else 0
        try:
            pieces = guarded_pieces(
                stream, guard, hold_back=hold_back, release_when_settled=local.stream_release_when_settled,
                release_when_opening_differs=local.stream_release_when_settled and local.stream_release_when_opening_differs,
            )  # fmt: skip
            for piece in pieces:
                exchange.mark_first_token()
                yield piece
            if guard.problem is not None:
                if fallible:
                    exchange.rejected_local_text = guard.rejected_text or ""
                    raise LocalFailure("degenerate", guard.problem)
                # A forced-local request (or a private one configured so) cannot fall back: serve the text before the problem, flagged.
                exchange.degenerate = guard.problem
        except LocalFailure:
            raise
        except Exception as err:  # a crash in the native layer is a local failure like any other
            raise LocalFailure("error", f"{type(err).__name__}: {err}") from err
        finally:
            stream.close()
        exchange.finish_reason = exchange.finish_reason or stream.finish_reason
        if local.followed_registry and stream.adapter_version is not None:  # a swap may land while a request waits
            exchange.adapter_version = stream.adapter_version
            if exchange.canary_version not in (None, stream.adapter_version):
                exchange.canary_arm = exchange.canary_version = None  # the canary ended meanwhile: not counted
        exchange.prompt_tokens = stream.prompt_tokens
        exchange.completion_tokens = stream.completion_tokens
        exchange.cloud_cost_usd_estimate = self._cloud_estimate(exchange)
        exchange.cost_usd = 0.0

    def _deadline(self, request: ChatRequest) -> float:
        timeout = self.config.local.timeout_s
        if request.timeout_s is not None:
            timeout = min(timeout, request.timeout_s)
        return time.monotonic() + timeout

    def _cloud_estimate(self, exchange: Exchange) -> float | None:
        route = self.config.route_for(exchange.decision.cloud_model)
        return self.cloud.cost(route.price_as, exchange.prompt_tokens or 0, exchange.completion_tokens or 0, wait=False)

    # -- failure --------------------------------------------------------------------------------

    def hands_off_private(self, decision: Decision) -> bool:
        """Whether a private answer the guard rejects becomes the hand-off message (never the degenerate text)."""
        return decision.private and self.config.quality.private_degenerate == "handoff"

    def caller_error(self, failure: LocalFailure) -> APIError:
        """The error a caller sees for ``failure`` when no other tier answers instead (:mod:`router._fallback` picks it)."""
        if failure.kind == "overloaded":
            return OverloadedError(
                f"The local model is busy ({failure.detail}) and this request may not go to the cloud; retry shortly.",
                retry_after_s=self.config.local.retry_after_s,
            )
        if failure.kind == "timeout":
            return APITimeoutError(f"The local model did not answer in time: {failure.detail}")
        return InternalServerError(f"The local model failed ({failure.kind}): {failure.detail}", code=f"local_{failure.kind}")
