"""The routing policy: which tier serves a request, and the reason recorded for it.

Pure decision logic over the validated request and the classifier's prediction, so every rule is
testable without a model. The order of the rules is the contract:

1. privacy: a private category or a PII match never leaves the machine;
2. ``model="local"`` forces the local tier;
3. names pinned to the cloud (``always_cloud``, or routing of named models switched off);
4. requests the local tier cannot serve (tools, images, ``n > 1`` ...) go to the cloud;
5. the classifier: no classifier, an edge case, or a category not served locally go to the cloud;
6. the quality gate (:mod:`router.quality`): a local category the serving model has not proven
   good at goes to the cloud too, with the figures in ``detail``;
7. stickiness: a follow-up of a topic whose earlier turn the cloud answered stays there
   (:mod:`router._sticky`); everything else is answered locally.

Private requests never leave: unproven, they are answered locally and flagged, or handed off with
a configured message.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from hybrid_common.chat import message_text
from hybrid_common.errors import BadRequestError, PrivacyError
from hybrid_common.pii import PiiMatcher, luhn_valid
from router._request import ChatRequest
from router.config import RouterConfig
from router.quality import GateVerdict
from router.types import Reason, Tier

__all__ = ["AUTO_MODEL", "LOCAL_MODEL", "Decision", "RoutingPolicy", "luhn_valid"]

AUTO_MODEL = "auto"
LOCAL_MODEL = "local"


@dataclass(frozen=True)
class Decision:
    """Where a request goes and why; ``private`` forbids any cloud fallback."""

    tier: Tier
    reason: Reason
    detail: str = ""
    cloud_model: str = ""
    private: bool = False
    forced: bool = False
    quality: str | None = None  # a private answer the gate could not vouch for: "unproven" / "below_floor"


class RoutingPolicy:
    """Applies the configured rules; construct once per client (patterns compile here)."""

    def __init__(self, config: RouterConfig) -> None:
        self._config = config
        self._pii = PiiMatcher(config.routing.pii_patterns)
        local = config.routing.local_categories
        self._local_categories = None if local == "*" else frozenset(local)
        self._private_categories = frozenset(config.routing.private_categories)

    def pii_match(self, text: str) -> str | None:
        """The name of the first PII pattern found in ``text`` (card numbers: issuer prefix and Luhn)."""
        return self._pii.find(text)

    def serves_locally(self, category: str) -> bool:
        return self._local_categories is None or category in self._local_categories

    def cloud_model_for(self, requested: str) -> str:
        return self._config.cloud.default_model if requested in (AUTO_MODEL, LOCAL_MODEL) else requested

    def decide(
        self,
        request: ChatRequest,
        *,
        category: str | None,
        has_classifier: bool,
        gate: Callable[[str], GateVerdict] | None = None,
        private_categories: frozenset[str] = frozenset(),
        turn_categories: Sequence[tuple[int, str | None]] = (),
        follows: int | None = None,
        sticky: str | None = None,
    ) -> Decision:
        """Apply the rules in order; raise when no tier may serve the request.

        ``gate(category)`` is the quality gate's verdict for the model serving now; without one,
        every local category is served (the behaviour before the gate existed).
        ``private_categories`` adds to the configured ones (those the serving classifier version
        marks private: categories found by ``router discover`` and marked private there).
        ``turn_categories`` is ``(message index, category)`` of every user turn: a conversation is
        as private as its most private turn, so an earlier private turn keeps it on the machine.
        ``category`` is the last turn's category in its conversation; ``follows`` the message index of
        the turn whose topic it continues (it inherited that turn's category), named in ``detail``.
        ``sticky`` says which earlier answer of the topic the cloud gave: the topic stays there.
        """
        cloud_model = self.cloud_model_for(request.model)
        blockers = ", ".join(request.local_blockers)

        private_reason = self._private_reason(request, category, turn_categories, private_categories, follows)
        if private_reason is not None:
            if blockers:
                raise PrivacyError(
                    f"This request is private ({private_reason[0].value}: {private_reason[1]}) and may not leave the "
                    f"machine, but the local tier cannot serve it ({blockers}).",
                    code="private_request_not_servable",
                )
            return self._private(private_reason[:2], category or private_reason[2], cloud_model, gate)

        if request.model == LOCAL_MODEL:
            if blockers:
                raise BadRequestError(
                    f"model='local' was requested but the local tier cannot serve this request: {blockers}.",
                    param="model",
                    code="unsupported_by_local_model",
                )
            return Decision("local", Reason.FORCED_LOCAL, "", cloud_model, forced=True)

        if request.model != AUTO_MODEL:
            if self._config.route_for(request.model).always_cloud:
                return Decision("cloud", Reason.PINNED_CLOUD, request.model, cloud_model, forced=True)
            if not self._config.routing.route_named_models:
                return Decision("cloud", Reason.DIRECT_MODEL, request.model, cloud_model, forced=True)

        if blockers:
            return Decision("cloud", Reason.UNSUPPORTED, blockers, cloud_model)
        if not has_classifier:
            return Decision("cloud", Reason.NO_CLASSIFIER, "", cloud_model)
        context = f" (follow-up of messages[{follows}])" if follows is not None else ""
        if category is None:
            return Decision("cloud", Reason.EDGE_CASE, f"out of scope or low confidence{context}", cloud_model)
        if not self.serves_locally(category):
            return Decision("cloud", Reason.CATEGORY_NOT_LOCAL, f"{category}{context}", cloud_model)
        if gate is not None:
            verdict = gate(category)
            if not verdict.open:
                return Decision("cloud", verdict.reason or Reason.LOCAL_QUALITY_UNPROVEN, verdict.detail, cloud_model)
        if sticky is not None:  # servable locally, but the topic's earlier answer was the cloud's
            return Decision("cloud", Reason.STICKY_CLOUD, f"{category}{context}: {sticky}", cloud_model)
        return Decision("local", Reason.LOCAL_CATEGORY, f"{category}{context}", cloud_model)

    def _private_reason(
        self,
        request: ChatRequest,
        category: str | None,
        turn_categories: Sequence[tuple[int, str | None]],
        extra_private: frozenset[str],
        follows: int | None = None,
    ) -> tuple[Reason, str, str | None] | None:
        """Why the conversation must stay on the machine (reason, detail naming the turn, the private
        category), or None: the last turn's category (inherited from the turn that opened its topic,
        ``follows``), then any earlier turn's, then PII anywhere."""
        private = self._private_categories | extra_private
        if category is not None and category in private:
            if follows is not None:
                return Reason.PRIVATE_CATEGORY, f"{category} (an earlier turn, messages[{follows}])", category
            return Reason.PRIVATE_CATEGORY, category, category
        for index, turn_category in turn_categories:
            if turn_category is not None and turn_category in private:
                return Reason.PRIVATE_CATEGORY, f"{turn_category} (an earlier turn, messages[{index}])", turn_category
        for index, message in enumerate(request.messages):
            if (pii := self.pii_match(message_text(message.get("content")))) is not None:
                return Reason.PII_MATCH, f"{pii} in messages[{index}]", None
        return None

    def _private(
        self, why: tuple[Reason, str], category: str | None, cloud_model: str, gate: Callable[[str], GateVerdict] | None
    ) -> Decision:
        """A private request stays; the gate only decides whether it is flagged or handed off."""
        reason, detail = why
        verdict = gate(category) if gate is not None and category is not None else None
        if gate is None or (verdict is not None and verdict.open):
            return Decision("local", reason, detail, cloud_model, private=True)
        quality = "below_floor" if verdict is not None and verdict.reason is Reason.LOCAL_QUALITY_BELOW_FLOOR else "unproven"
        figures = verdict.detail if verdict is not None else "no category"
        if self._config.quality.private_unproven == "handoff" and reason is Reason.PRIVATE_CATEGORY:
            return Decision("handoff", Reason.PRIVATE_HANDOFF, f"{detail}: local quality {quality} ({figures})", cloud_model, private=True)
        return Decision("local", reason, f"{detail}; local quality {quality} ({figures})", cloud_model, private=True, quality=quality)
