"""When the cloud tier retries and how long it waits: ``Retry-After`` parsing and the wait rule (pure logic)."""

from __future__ import annotations

import time
from email.utils import formatdate

import pytest

from hybrid_common.errors import BadRequestError, InternalServerError, RateLimitError
from router.backends._retry import backoff_s, retry_after_s, retry_wait_s
from router.config import CloudConfig


class _Raw(Exception):
    """Stands in for litellm's exception only as a carrier of the headers litellm attaches."""

    def __init__(self, headers: dict[str, str]) -> None:
        super().__init__("raw")
        self.litellm_response_headers = headers


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"retry-after": "7"}, 7.0),
        ({"retry-after": "1.5"}, 1.5),
        ({"retry-after-ms": "250"}, 0.25),
        ({"retry-after-ms": "250", "retry-after": "9"}, 0.25),  # the finer one wins
        ({"retry-after-ms": "soon", "retry-after": "9"}, 9.0),
        ({"retry-after": "-3"}, 0.0),
        ({"retry-after": "whenever"}, None),
        ({}, None),
    ],
)
def test_retry_after_forms(headers: dict[str, str], expected: float | None) -> None:
    assert retry_after_s(headers) == expected


def test_retry_after_as_an_http_date() -> None:
    now = 1_800_000_000.0
    assert retry_after_s({"retry-after": formatdate(now + 12, usegmt=True)}, now=now) == 12.0
    assert retry_after_s({"retry-after": formatdate(now - 5, usegmt=True)}, now=now) == 0.0


def test_backoff_doubles_with_jitter_up_to_the_ceiling() -> None:
    config = CloudConfig(backoff_initial_s=1.0, backoff_max_s=4.0)
    for attempt, full in ((0, 1.0), (1, 2.0), (2, 4.0), (5, 4.0)):
        waits = [backoff_s(attempt, config) for _ in range(200)]
        assert all(full / 2 <= w <= full for w in waits)
        assert max(waits) - min(waits) > full / 10  # jittered, not one fixed value


def test_wait_rule() -> None:
    config = CloudConfig(backoff_initial_s=0.0, retry_after_max_s=10.0)
    far = time.monotonic() + 60
    limited = RateLimitError("slow down")
    assert retry_wait_s(limited, _Raw({"retry-after": "3"}), 0, config, deadline=far) == 3.0
    assert retry_wait_s(limited, _Raw({}), 0, config, deadline=far) == 0.0  # no header: back-off
    assert retry_wait_s(limited, _Raw({"retry-after": "11"}), 0, config, deadline=far) is None  # past the cap
    soon = time.monotonic() + 2
    assert retry_wait_s(limited, _Raw({"retry-after": "3"}), 0, config, deadline=soon) is None  # past the deadline
    assert retry_wait_s(InternalServerError("503"), _Raw({"retry-after": "2"}), 0, config, deadline=far) == 2.0
    assert retry_wait_s(BadRequestError("bad"), _Raw({}), 0, config, deadline=far) is None  # not retryable
