"""Who may post feedback on an answer, and what a feedback call must hold.

Feedback is evidence that changes routing (a vote can close a category) and training data (a
correction becomes an example at the next retrain), so it is bounded per source: it is taken
from the caller who received the answer (the same API key over HTTP, else the same ``user``) or
from an operator, and one vote per response counts (:meth:`router.quality.QualityGate.record_vote`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from hybrid_common.errors import BadRequestError, PermissionDeniedError

__all__ = ["IN_PROCESS_OPERATOR", "FeedbackSender", "authorize_feedback", "check_feedback"]


@dataclass(frozen=True)
class FeedbackSender:
    """Who sends a feedback call.

    ``caller`` is the API-key fingerprint ``router serve`` authenticated (None in-process or on a
    server without keys); ``user`` the end user an application speaks for; ``operator`` may post
    on any answer.
    """

    user: str | None = None
    caller: str | None = None
    operator: bool = False


IN_PROCESS_OPERATOR = FeedbackSender(operator=True)
"""An application calling ``client.feedback`` without ``user``: it holds the configuration, so it is trusted."""


def check_feedback(score: Any, accepted: Any, correction: Any) -> None:
    """Raise a 400 unless the call holds a score in [0, 1], a boolean verdict, or a non-empty correction."""
    if score is None and accepted is None and correction is None:
        raise BadRequestError("feedback needs a score, accepted or a correction", param="score")
    if score is not None and (isinstance(score, bool) or not isinstance(score, (int, float)) or not 0.0 <= score <= 1.0):
        raise BadRequestError(f"feedback score must be a number in [0, 1], got {score!r}", param="score")
    if accepted is not None and not isinstance(accepted, bool):
        raise BadRequestError("feedback 'accepted' must be true or false", param="accepted")
    if correction is not None and (not isinstance(correction, str) or not correction.strip()):
        raise BadRequestError("a feedback correction must be non-empty text", param="correction")


def may_send(sender: FeedbackSender, *, row_caller: str | None, row_user: str | None) -> bool:
    """Whether ``sender`` received the answer logged with ``row_caller`` / ``row_user`` (or is an operator)."""
    if sender.operator:
        return True
    if row_caller is not None:  # asked over HTTP with a key: only that key
        return sender.caller == row_caller
    if sender.caller is not None:  # a keyed HTTP caller, about an answer it did not receive over HTTP
        return False
    return row_user is None or sender.user == row_user


def authorize_feedback(sender: FeedbackSender, row: Any, *, rule: str) -> None:
    """Raise 403 unless ``sender`` may post feedback on the logged ``row`` under ``quality.feedback_from``."""
    if rule == "anyone" or may_send(sender, row_caller=row.caller, row_user=row.user):
        return
    raise PermissionDeniedError(
        f"feedback on {row.id} is accepted only from the caller who received that answer, or with an operator key",
        code="feedback_not_yours",
    )
