"""The quality gate in a running router: registry evidence, promotion and rollback re-gate it without a
restart, and a missing API key is reported as such instead of being masked by an unchecked local answer."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from finetune.registry import ModelRegistry
from router import AuthenticationError, Client, Reason, RouterConfig
from tests.conftest import settle_local_swap, user
from tests.finetune.conftest import write_tiny_adapter

pytestmark = pytest.mark.slow

ORDER_QUERY = "I want to cancel the order I placed yesterday"
GOOD = {"similarity": 0.84, "degenerate_rate": 0.0, "examples": 30.0, "rouge_l": 0.4, "format_valid_rate": 1.0}
POOR = {"similarity": 0.55, "degenerate_rate": 0.9, "examples": 30.0, "rouge_l": 0.1, "format_valid_rate": 0.1}


def test_promotion_and_rollback_regate_a_running_router(make_config, tmp_path: Path) -> None:
    registry = ModelRegistry(tmp_path / "registry")
    registry.add(None, metrics=POOR, category_metrics={"ORDER": POOR})
    registry.add(write_tiny_adapter(tmp_path / "a.gguf"), metrics=GOOD, category_metrics={"ORDER": GOOD})
    registry.promote("base")
    local = {"registry_path": str(registry.root), "registry_poll_s": 0.05}
    with Client(make_config(local=local, quality={"overrides": {}})) as client:
        closed = client.chat.completions.create(model="auto", messages=user(ORDER_QUERY), max_tokens=8)
        assert (closed.router.category, closed.router.tier, closed.router.reason) == ("ORDER", "cloud", Reason.LOCAL_QUALITY_BELOW_FLOOR)
        assert "similarity 0.550" in closed.router.detail and "registry base" in closed.router.detail

        registry.promote("v0001")
        time.sleep(0.2)
        settle_local_swap(client)
        opened = client.chat.completions.create(model="auto", messages=user(ORDER_QUERY), max_tokens=8)
        assert (opened.router.reason, opened.router.adapter_version) == (Reason.LOCAL_CATEGORY, "v0001")

        registry.rollback()
        time.sleep(0.2)
        settle_local_swap(client)
        again = client.chat.completions.create(model="auto", messages=user(ORDER_QUERY), max_tokens=8)
        assert again.router.reason is Reason.LOCAL_QUALITY_BELOW_FLOOR
        rows = list(client.traffic_log.records())
    assert [r.reason for r in rows] == ["local_quality_below_floor", "local_category", "local_quality_below_floor"]
    assert "floors: similarity" in rows[0].detail  # the log records why


def test_unproven_categories_go_to_the_cloud_and_private_ones_stay_flagged(make_config) -> None:
    with Client(make_config(quality={"overrides": {}})) as client:
        r = client.chat.completions.create(model="auto", messages=user(ORDER_QUERY), max_tokens=8)
        assert (r.router.tier, r.router.reason) == ("cloud", Reason.LOCAL_QUALITY_UNPROVEN)
        assert "router evaluate" in r.router.detail
        private = client.chat.completions.create(model="auto", messages=user("my email is jane@example.com, where is my order?"), max_tokens=8)
        assert (private.router.tier, private.router.quality) == ("local", "unproven")
    with Client(make_config(quality={"overrides": {}, "private_unproven": "handoff", "handoff_message": "A person will reply."})) as client:
        r = client.chat.completions.create(model="auto", messages=user("I need to change my payment method"), max_tokens=8)
        assert (r.router.tier, r.router.reason, r.choices[0].message.content) == ("handoff", Reason.PRIVATE_HANDOFF, "A person will reply.")
        chunks = list(client.chat.completions.create(model="auto", messages=user("I need to change my payment method"), stream=True))
        assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "A person will reply."


def test_a_missing_api_key_is_an_authentication_error_not_a_local_echo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Tried as a new user would: Client() with no key, model="gpt-4o"."""
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with Client(RouterConfig(warmup="lazy", log={"path": tmp_path / "log.db"}, cloud={"max_retries": 0})) as client:
        with pytest.raises(AuthenticationError, match="OPENAI_API_KEY"):
            client.chat.completions.create(model="gpt-4o", messages=user("where is my order?"), max_tokens=8)
        row = list(client.traffic_log.records())[-1]
    assert (row.tier, row.reason, row.error_type, row.fallback_from) == ("cloud", "no_classifier", "AuthenticationError", None)
