"""A canary served live: the split by conversation, the gate on the canary's own evidence, and the
decision a running router takes on its evidence and writes to the registry.

Real parts throughout: the packaged GGUF in the continuous batch with two adapters (the shipped
one and the untuned base), the stand-in cloud through litellm, the traffic log, the registry.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from finetune.registry import ModelRegistry
from router import Client
from tests.conftest import bitext_rows, settle_local_swap
from tests.finetune.conftest import write_tiny_adapter

SHIPPED = Path(__file__).resolve().parents[2] / "evals" / "adapters" / "bitext-support"
GOOD = {"similarity": 0.84, "degenerate_rate": 0.0, "examples": 40}
POOR = {"similarity": 0.50, "degenerate_rate": 0.0, "examples": 40}
POLL_S = 0.05

pytestmark = pytest.mark.slow


def shipped_adapter() -> Path:
    manifest = json.loads((SHIPPED / "manifest.json").read_text(encoding="utf-8"))
    return SHIPPED / manifest["adapter_file"]


def queries(category: str, n: int, skip: int = 0) -> list[str]:
    rows = [r["instruction"] for r in bitext_rows() if r["category"] == category]
    return rows[skip : skip + n]


def canary_config(make_config: Callable[..., Any], registry: ModelRegistry, min_samples: int = 10, **canary: Any) -> Any:
    return make_config(
        local={"registry_path": registry.root, "registry_poll_s": POLL_S, "reject_echo": True, "degenerate_min_span": 48,
               "max_sequences": 4},
        quality={"overrides": {}, "shadow_rate": 0.0, "audit_rate": 0.0, "idle_s": 0.0, "min_samples": min_samples},
        canary={"look_every": 5, "min_audits": 5, "max_audits": 100, "max_requests": 200, **canary},
    )  # fmt: skip


def ask(client: Client, messages: list[dict[str, str]], model: str = "gpt-4o", max_tokens: int = 16) -> Any:
    return client.chat.completions.create(model=model, messages=messages, max_tokens=max_tokens, temperature=0)


def wait_for_canary_state(registry: ModelRegistry, present: bool, timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while ("canary" in (registry.serving_state() or {})) != present and time.monotonic() < deadline:
        time.sleep(0.05)


def test_a_canary_never_serves_a_category_below_its_floor_and_a_conversation_keeps_its_version(
    tmp_path: Path, make_config: Callable[..., Any]
) -> None:
    registry = ModelRegistry(tmp_path / "registry")
    serving = registry.add(shipped_adapter(), metrics={"similarity": 0.84},
                           category_metrics={"ORDER": GOOD, "DELIVERY": GOOD, "PAYMENT": GOOD}).version  # fmt: skip
    canary = registry.add(write_tiny_adapter(tmp_path / "tiny.gguf", seed=3), metrics={"similarity": 0.84},
                          category_metrics={"ORDER": GOOD, "DELIVERY": GOOD, "PAYMENT": POOR}).version  # fmt: skip
    registry.promote(serving)
    registry.start_canary(canary, 0.5)
    with Client(canary_config(make_config, registry, decide=False, audit_rate=0.0)) as client:
        # PAYMENT is private: the canary's evidence there is below the floor, so the serving version answers every one.
        payment = [ask(client, [{"role": "user", "content": q}], max_tokens=8) for q in queries("PAYMENT", 12)]
        assert all(r.router.category == "PAYMENT" and r.router.tier == "local" for r in payment)
        assert {r.router.adapter_version for r in payment} == {serving}
        # ORDER is open on both versions' evidence: conversations are split between them.
        orders = {q: ask(client, [{"role": "user", "content": q}], model="local", max_tokens=8) for q in queries("ORDER", 12)}
        versions = {q: r.router.adapter_version for q, r in orders.items() if r.router.category == "ORDER"}
        assert set(versions.values()) == {serving, canary}, versions
        on_canary = next(q for q, v in versions.items() if v == canary)
        assert f"canary {canary}" in orders[on_canary].router.detail
        # Every later turn of a conversation keeps the version its first turn had.
        messages = [{"role": "user", "content": on_canary}]
        for follow_up in ("ok do it", "and how long will that take?", "thanks, one more thing about that order"):
            messages += [{"role": "assistant", "content": "Sure."}, {"role": "user", "content": follow_up}]
            turn = ask(client, messages, model="local", max_tokens=8)
            assert turn.router.adapter_version == canary
        assert "canary" in registry.serving_state()  # decide = false: the evidence decides nothing
        before = client._engine.canary.evidence()
    # Only requests the canary could serve count, on both arms: the ORDER ones, not the PAYMENT ones.
    assert before is not None and before["canary"]["answers"] >= 4 and before["serving"]["answers"] >= 1
    eligible = sum(r.router.category in ("ORDER", "DELIVERY") for r in orders.values())
    assert before["canary"]["answers"] + before["serving"]["answers"] == eligible + 3
    # A restarted router resumes the canary's evidence from the log, arm by arm.
    with Client(canary_config(make_config, registry, decide=False, audit_rate=0.0)) as restarted:
        one = ask(restarted, [{"role": "user", "content": queries("ORDER", 1, skip=12)[0]}], model="local", max_tokens=4)
        after = restarted._engine.canary.evidence()
    assert after is not None
    counted = one.router.category in ("ORDER", "DELIVERY")
    assert after["canary"]["answers"] + after["serving"]["answers"] == eligible + 3 + counted
    assert after["canary"]["answers"] >= before["canary"]["answers"] and after["serving"]["answers"] >= before["serving"]["answers"]


def test_a_degenerate_canary_is_rolled_back_live_and_stays_retired_after_a_restart(
    tmp_path: Path, make_config: Callable[..., Any]
) -> None:
    registry = ModelRegistry(tmp_path / "registry")
    serving = registry.add(shipped_adapter(), metrics={"similarity": 0.84}, category_metrics={"ORDER": GOOD, "DELIVERY": GOOD}).version
    # The untuned base model, registered as if its offline evaluation had passed: only live evidence can catch it.
    registry.add(None, metrics={"similarity": 0.84}, category_metrics={"ORDER": GOOD, "DELIVERY": GOOD})
    registry.promote(serving)
    registry.start_canary("base", 0.5)
    config = canary_config(make_config, registry, audit_rate=0.0)  # the guard's verdicts alone decide here
    texts = queries("ORDER", 60) + queries("DELIVERY", 60)
    served_by_canary = 0
    with Client(config) as client:
        for i, text in enumerate(texts):
            response = ask(client, [{"role": "user", "content": text}])
            served_by_canary += response.router.adapter_version == "base" or "canary base" in (response.router.detail or "")
            if "canary" not in (registry.serving_state() or {}):
                break
        assert "canary" not in registry.serving_state(), f"still running after {i + 1} requests"
        decision = registry.history()[-1]
        assert decision["action"] == "canary_rollback" and decision["version"] == "base"
        assert decision["evidence"]["canary"]["degenerate_rate"] > decision["evidence"]["serving"]["degenerate_rate"]
        assert served_by_canary <= 40
        time.sleep(POLL_S * 2)
        settle_local_swap(client)
        after = [ask(client, [{"role": "user", "content": t}], model="local", max_tokens=8) for t in texts[:8]]
        assert {r.router.adapter_version for r in after} == {serving}
    with Client(config) as restarted:  # the decision is the registry's: a restarted router keeps it
        again = [ask(restarted, [{"role": "user", "content": t}], model="local", max_tokens=8) for t in texts[:8]]
        assert {r.router.adapter_version for r in again} == {serving}
    out = json.loads(json.dumps(registry.history()[-1]))  # the evidence is plain JSON
    assert out["evidence"]["guard_looks"] >= 1


def test_a_better_canary_is_promoted_live_on_audits(tmp_path: Path, make_config: Callable[..., Any]) -> None:
    registry = ModelRegistry(tmp_path / "registry")
    registry.add(None, metrics={"similarity": 0.84}, category_metrics={"ORDER": GOOD, "DELIVERY": GOOD})
    candidate = registry.add(shipped_adapter(), metrics={"similarity": 0.84}, category_metrics={"ORDER": GOOD, "DELIVERY": GOOD}).version
    registry.promote("base")
    registry.start_canary(candidate, 0.5)
    # Audits on both arms at the same rate; the base model's degenerate answers score 0 there.
    # The serving version's own live gate would close a category after `min_samples` such audits and
    # send it to the cloud, canary arm included (a canary serves only requests the local tier answers).
    # At 10, a salt that puts most early conversations on the serving arm starved the canary below
    # its 5 audits in both categories (CI, 2026-12-04); at 40 the canary reaches 5 first.
    config = canary_config(make_config, registry, min_samples=40, audit_rate=1.0)
    texts = queries("ORDER", 60, skip=60) + queries("DELIVERY", 60, skip=60)
    with Client(config) as client:
        for text in texts:
            ask(client, [{"role": "user", "content": text}], max_tokens=12)
            assert client.wait_for_samples(120)  # audits run in the background: let each decide before the next request
            if "canary" not in (registry.serving_state() or {}):
                break
        wait_for_canary_state(registry, present=False, timeout_s=120)
        decision = registry.history()[-1]
        assert decision["action"] == "canary_promote", (decision, client._engine.canary.evidence())
        assert registry.serving_state()["version"] == candidate
        assert decision["evidence"]["canary"]["audits"] >= 5 and decision["evidence"]["serving"]["audits"] >= 1
