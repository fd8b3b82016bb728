"""The fallback state machine alone: plans, transitions and the error a caller sees, without models."""

from __future__ import annotations

import pytest

from router import APIConnectionError, BadRequestError, InternalServerError, Reason
from router._fallback import FallbackRun, TierFailure, fallback_plan, stays_local
from router.backends import LocalFailure
from router.policy import Decision

LOCAL = Decision("local", Reason.LOCAL_CATEGORY, "ORDER", "gpt-4o")
PRIVATE = Decision("local", Reason.PII_MATCH, "email", "gpt-4o", private=True)
FORCED_LOCAL = Decision("local", Reason.FORCED_LOCAL, "", "gpt-4o", forced=True)
EDGE = Decision("cloud", Reason.EDGE_CASE, "", "gpt-4o")
PINNED = Decision("cloud", Reason.PINNED_CLOUD, "gpt-4o", "gpt-4o", forced=True)


def local_failure(kind: str = "degenerate") -> TierFailure:
    cause = LocalFailure(kind, "repetition loop")
    return TierFailure("local", f"{kind}: repetition loop", InternalServerError(f"local {kind}"), cause)


def cloud_failure() -> TierFailure:
    return TierFailure("cloud", "APIConnectionError: down", APIConnectionError("down"))


@pytest.mark.parametrize(
    ("decision", "cloud_to_local", "local_servable", "plan"),
    [
        (LOCAL, True, True, ("local", "cloud")),
        (LOCAL, False, True, ("local", "cloud")),
        (PRIVATE, True, True, ("local",)),
        (FORCED_LOCAL, True, True, ("local",)),
        (EDGE, True, True, ("cloud", "local")),
        (EDGE, False, True, ("cloud",)),
        (EDGE, True, False, ("cloud",)),  # tools, images, n > 1 ...: the local tier cannot serve it
        (PINNED, True, True, ("cloud",)),
    ],
)
def test_plans(decision, cloud_to_local, local_servable, plan) -> None:
    assert fallback_plan(decision, cloud_to_local=cloud_to_local, local_servable=local_servable) == plan


def test_stays_local_only_for_private_or_forced_local() -> None:
    assert stays_local(PRIVATE) and stays_local(FORCED_LOCAL)
    assert not stays_local(LOCAL) and not stays_local(EDGE) and not stays_local(PINNED)


def test_local_failure_moves_to_the_cloud_and_each_tier_is_tried_once() -> None:
    run = FallbackRun(("local", "cloud"))
    tried = []
    for tier in run:
        tried.append(tier)
        assert run.fallback_from == (None if tier == "local" else "local")
        try:
            run.failed(local_failure() if tier == "local" else cloud_failure())
        except APIConnectionError as err:
            assert isinstance(err.__cause__, LocalFailure)  # the cloud's error, chained to the local failure
            break
    assert tried == ["local", "cloud"]


def test_failed_returns_the_next_tier() -> None:
    run = FallbackRun(("cloud", "local"))
    tiers = iter(run)
    assert next(tiers) == "cloud"
    assert run.failed(cloud_failure()) == "local"
    assert next(tiers) == "local"


def test_moving_on_without_reporting_a_failure_is_a_driver_bug() -> None:
    tiers = iter(FallbackRun(("local", "cloud")))
    next(tiers)
    with pytest.raises(RuntimeError, match="neither answered nor reported"):
        next(tiers)


def test_cloud_then_local_failure_reports_the_cloud_error_from_the_local_failure() -> None:
    run = FallbackRun(("cloud", "local"))
    cloud = cloud_failure()
    run.failed(cloud)
    with pytest.raises(APIConnectionError) as info:
        run.failed(local_failure("timeout"))
    assert info.value is cloud.error and isinstance(info.value.__cause__, LocalFailure)
    assert info.value.__cause__.kind == "timeout"


def test_private_local_failure_reports_the_local_error_from_its_cause() -> None:
    run = FallbackRun(fallback_plan(PRIVATE, cloud_to_local=True, local_servable=True))
    failure = local_failure()
    with pytest.raises(InternalServerError) as info:
        run.failed(failure)
    assert info.value is failure.error and info.value.__cause__ is failure.cause


def test_a_lone_cloud_failure_keeps_the_cause_the_backend_gave() -> None:
    run = FallbackRun(("cloud",))
    failure = cloud_failure()
    provider = RuntimeError("provider said no")
    failure.error.__cause__ = provider
    with pytest.raises(APIConnectionError) as info:
        run.failed(failure)
    assert info.value.__cause__ is provider


def test_errors_that_are_not_tier_failures_are_not_the_machine_s_business() -> None:
    """A 400 (e.g. a private prompt too long for the local window) is raised by the driver, not retried."""
    assert not issubclass(BadRequestError, TierFailure)
    with pytest.raises(RuntimeError):
        FallbackRun(("local",)).final_error()


def test_a_fallback_tier_the_run_may_not_use_ends_it_with_the_first_error() -> None:
    asked: list[str] = []

    def allowed(tier: str) -> bool:
        asked.append(tier)
        return False

    run = FallbackRun(("cloud", "local"), allowed=allowed)
    assert next(iter(run)) == "cloud" and asked == []  # not asked until a fallback would happen
    failure = cloud_failure()
    with pytest.raises(APIConnectionError) as info:
        run.failed(failure)
    assert info.value is failure.error and asked == ["local"]
