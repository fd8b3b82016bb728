"""Bad input, generated: the validator with hypothesis, the HTTP API with schemathesis from its own OpenAPI.

A request is answered with a 4xx and a clear message, or reaches the real tiers and is answered;
never a 5xx, and nothing is logged half-written. Valid cases are kept cheap by a local token cap
of 1 and the stand-in cloud in recorded-answer mode (it answers at once).

``FUZZ_EXAMPLES`` scales the number of generated cases (default: a CI-sized run);
``FUZZ_RESULTS=evals/results/load.json`` merges the counts there (``make bench-fuzz``).
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hybrid_common.errors import BadRequestError
from router import Client, RouterConfig
from router._request import build_request
from tests.router.test_server import TOKEN, _free_port

pytestmark = pytest.mark.slow

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "150"))
COUNTS: Counter[str] = Counter()

_text = st.text(st.characters(codec=None, exclude_categories=()), max_size=40)  # NUL, lone surrogates, anything
_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True, allow_infinity=True) | _text,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_text, inner, max_size=4),
    max_leaves=12,
)
_message = st.fixed_dictionaries(
    {"role": st.sampled_from(["user", "system", "assistant", "developer", "tool", "wizard", ""]) | _json},
    optional={"content": _text | _json, "name": _json, "tool_calls": _json},
)
_kwargs = st.fixed_dictionaries(
    {"model": st.sampled_from(["auto", "local", "gpt-4o"]) | _json, "messages": st.lists(_message, max_size=3) | _json},
    optional={
        key: _json | st.integers(min_value=-(2**70), max_value=2**70)
        for key in ("max_tokens", "max_completion_tokens", "temperature", "top_p", "stream", "stream_options", "stop",
                    "seed", "user", "metadata", "timeout", "frequency_penalty", "presence_penalty", "n")
    },
)  # fmt: skip


@settings(max_examples=EXAMPLES * 4, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(kwargs=_kwargs, extra=st.dictionaries(_text, _json, max_size=2))
def test_the_request_validator_accepts_or_raises_a_400_never_anything_else(kwargs: dict[str, Any], extra: dict[str, Any]) -> None:
    COUNTS["validator"] += 1
    try:
        build_request(max_input_chars=5000, **{**extra, **kwargs})
    except BadRequestError as err:
        assert err.status_code == 400 and err.message and err.body["param"] is not None
    except TypeError:
        # Python itself refuses a keyword that is not an identifier string (the SDK would too);
        # only reachable through **extra, never through the server, which reads a JSON object.
        assert any(not isinstance(k, str) or not k.isidentifier() for k in extra)


@pytest.fixture(scope="module")
def fuzz_server(tmp_path_factory: pytest.TempPathFactory, classifier_path: Path) -> Iterator[dict[str, Any]]:
    from evals.standin_cloud import LatencyModel, StandinCloud
    from router.server import build_server

    work = tmp_path_factory.mktemp("fuzz")
    answers = work / "answers.jsonl"
    answers.write_text(json.dumps({"query": "Where is my order?", "answer": "It ships tomorrow."}) + "\n", encoding="utf-8")
    with StandinCloud(answers=answers, record=work / "cloud.jsonl", latency=LatencyModel.none()) as cloud:
        config = RouterConfig(
            models=cloud.models,
            cloud={"default_model": "gpt-4o", "max_retries": 0},
            classifier={"path": classifier_path},
            routing={"local_categories": ["ORDER", "SHIPPING", "DELIVERY"], "private_categories": ["PAYMENT"]},
            quality={"overrides": {"ORDER": "trust", "SHIPPING": "trust", "DELIVERY": "trust", "PAYMENT": "trust"}, "shadow_rate": 0.0, "audit_rate": 0.0},
            local={"max_tokens": 1, "default_max_tokens": 1, "n_threads": 1, "n_ctx": 512, "reject_echo": False, "degenerate_min_span": 4000},
            log={"path": work / "traffic.sqlite3"},
            server={"api_keys": [TOKEN], "max_body_bytes": 64_000},
            warmup="eager",
        )  # fmt: skip
        client = Client(config)
        port = _free_port()
        server = build_server(client, port=port, log_level="error")
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 120
        while not server.started or httpx.get(f"{url}/ready").status_code != 200:
            assert time.monotonic() < deadline, "server did not become ready"
            time.sleep(0.1)
        yield {"url": url, "log": work / "traffic.sqlite3", "client": client}
        server.should_exit = True
        thread.join(60)
        client.close()


def _schema(url: str) -> Any:
    import schemathesis

    return schemathesis.openapi.from_url(f"{url}/openapi.json")


@pytest.mark.parametrize("mode", ["positive", "negative"])
@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/feedback"])
def test_generated_requests_get_a_4xx_or_an_answer_never_a_5xx(fuzz_server: dict[str, Any], path: str, mode: str) -> None:
    from schemathesis import GenerationMode

    operation = _schema(fuzz_server["url"])[path]["POST"]
    statuses: Counter[int] = Counter()
    failures: list[str] = []
    session = httpx.Client(base_url=fuzz_server["url"], headers={"Authorization": f"Bearer {TOKEN}"}, timeout=60)

    @settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    @given(case=operation.as_strategy(GenerationMode(mode)))
    def send(case: Any) -> None:
        COUNTS["http"] += 1
        body = case.body
        raw = body if isinstance(body, (bytes, str)) else json.dumps(body, allow_nan=True)
        r = session.post(path, content=raw, headers={"content-type": case.media_type or "application/json"})
        statuses[r.status_code] += 1
        if r.status_code >= 500:
            COUNTS["http_5xx"] += 1
            failures.append(f"{r.status_code} for {raw!r:.300}: {r.text:.300}")
        elif r.status_code >= 400:
            error = r.json()["error"]
            assert error["message"] and error["type"], r.text  # OpenAI's error shape, with a message

    send()
    session.close()
    print(f"{path} {mode}: {sum(statuses.values())} cases, statuses {dict(sorted(statuses.items()))}")
    assert not failures, failures[:5]


@pytest.mark.parametrize(
    ("raw", "status"),
    [
        (b'{"model": "auto", "messages": [{"role": "user", "content": "hi"}', 400),  # truncated JSON
        (b'{"model": "auto", "messages": [{"role": "user", "content": "\xff\xfe"}]}', 400),  # invalid UTF-8
        (b'{"model": "local", "messages": [{"role": "user", "content": "a\\u0000b"}]}', 200),  # NUL in text: answered
        (b'{"model": "local", "messages": [{"role": "user", "content": "\\ud800"}]}', 400),  # lone surrogate
        (b'{"model": "local", "max_tokens": -5, "messages": [{"role": "user", "content": "hi"}]}', 400),
        (b'{"model": "local", "max_tokens": 100000000000000000000, "messages": [{"role": "user", "content": "hi"}]}', 200),
        (b'{"model": "auto", "messages": [{"role": "root", "content": "hi"}]}', 400),
        (b'[1, 2, 3]', 400),
        (b"x" * 70_000, 413),
    ],
)
def test_hand_picked_bad_bodies(fuzz_server: dict[str, Any], raw: bytes, status: int) -> None:
    COUNTS["http"] += 1
    r = httpx.post(f"{fuzz_server['url']}/v1/chat/completions", content=raw,
                   headers={"Authorization": f"Bearer {TOKEN}", "content-type": "application/json"}, timeout=60)  # fmt: skip
    assert r.status_code == status, r.text
    if status >= 400:
        assert r.json()["error"]["message"]


def test_nothing_was_logged_half_written(fuzz_server: dict[str, Any]) -> None:
    """Run last in this module: every row the fuzzing left is whole (an answer or an error, with its route)."""
    with sqlite3.connect(fuzz_server["log"]) as db:
        rows = db.execute("SELECT reason, tier, response, error_type, created_at FROM requests").fetchall()
    assert rows, "no valid case reached the tiers"
    for reason, tier, response, error_type, created_at in rows:
        assert reason and created_at
        assert (tier is not None and response is not None) or error_type is not None
    _write_counts()


def _write_counts() -> None:
    target = os.environ.get("FUZZ_RESULTS")
    print(f"fuzz cases: validator {COUNTS['validator']}, HTTP {COUNTS['http']}, HTTP 5xx {COUNTS['http_5xx']}")
    if not target:
        return
    from evals.figures import merge_figures

    merge_figures(Path(target), {
        "fuzz_cases": COUNTS["validator"] + COUNTS["http"], "fuzz_cases_validator": COUNTS["validator"],
        "fuzz_cases_http": COUNTS["http"], "fuzz_5xx": COUNTS["http_5xx"],
    })  # fmt: skip
