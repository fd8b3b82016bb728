"""Hot reload: the local tier follows the model registry's promotions without a new Client."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
import pytest

from finetune.export import write_lora_gguf
from finetune.registry import ModelRegistry
from router import Client, RouterConfig
from router.adapter_watch import AdapterWatch
from router.traffic_log import TrafficLog
from tests.conftest import settle_local_swap
from tests.finetune.conftest import write_tiny_adapter

POLL_S = 0.05
PROMPT = [{"role": "user", "content": "Where is my order?"}]
METRICS = {"similarity": 0.5}


def ask(client: Client) -> tuple[str, str | None]:
    time.sleep(POLL_S * 2)  # let the poll interval pass
    settle_local_swap(client)
    completion = client.chat.completions.create(model="local", messages=PROMPT, max_tokens=12, temperature=0)
    return completion.choices[0].message.content, completion.router.adapter_version


@pytest.fixture
def registry(tmp_path: Path) -> ModelRegistry:
    registry = ModelRegistry(tmp_path / "registry")
    registry.add(None, metrics=METRICS)
    registry.add(write_tiny_adapter(tmp_path / "a1.gguf", seed=0), metrics=METRICS)
    registry.add(write_tiny_adapter(tmp_path / "a2.gguf", seed=1), metrics=METRICS)
    registry.promote("base")
    return registry


def config(tmp_path: Path, registry: ModelRegistry) -> RouterConfig:
    return RouterConfig(
        local={
            "registry_path": registry.root,
            "registry_poll_s": POLL_S,
            "n_threads": 1,
            "n_ctx": 512,
            "reject_echo": False,
            "degenerate_min_span": 4000,
        },
        cloud={"preimport": False},
        log={"path": tmp_path / "traffic.sqlite3"},
        warmup="lazy",
    )


@pytest.mark.slow
def test_promotion_and_rollback_are_served_without_restart(
    tmp_path: Path, registry: ModelRegistry, caplog: pytest.LogCaptureFixture
) -> None:
    with Client(config(tmp_path, registry)) as client:
        base_text, version = ask(client)
        assert version == "base"

        registry.promote("v0001")
        adapted_text, version = ask(client)
        assert version == "v0001" and adapted_text != base_text

        registry.rollback()
        assert ask(client) == (base_text, "base")

        # A promotion whose adapter no longer matches its checksum is refused: base keeps serving.
        registry.promote("v0002")
        adapter = registry.adapter_path("v0002")
        adapter.write_bytes(adapter.read_bytes()[:-16] + b"\x00" * 16)
        with caplog.at_level(logging.WARNING, logger="router"):
            assert ask(client) == (base_text, "base")
        assert "v0002" in caplog.text and "sha256" in caplog.text
    with TrafficLog(tmp_path / "traffic.sqlite3") as log:
        assert [r.adapter_version for r in log.records()] == ["base", "v0001", "base", "base"]


@pytest.mark.slow
def test_an_adapter_that_fails_to_load_keeps_the_current_model(
    tmp_path: Path, registry: ModelRegistry, caplog: pytest.LogCaptureFixture
) -> None:
    # Checksum fine, shapes wrong for this base model: llama.cpp refuses it.
    bad = write_lora_gguf(
        {"blk.0.attn_q.weight.lora_a": np.ones((4, 17), np.float32), "blk.0.attn_q.weight.lora_b": np.ones((5, 4), np.float32)},
        tmp_path / "bad.gguf",
        alpha=4.0,
    )
    registry.add(bad, metrics=METRICS, version="v0009")
    with Client(config(tmp_path, registry)) as client:
        base_text, _ = ask(client)
        registry.promote("v0009")
        with caplog.at_level(logging.WARNING, logger="router"):
            assert ask(client) == (base_text, "base")
        assert "v0009 failed to load" in caplog.text
        registry.promote("v0001")
        assert ask(client)[1] == "v0001"


def test_watch_reports_changes_once_and_refuses_bad_checksums(tmp_path: Path, registry: ModelRegistry) -> None:
    watch = AdapterWatch(registry.root, poll_s=0.0)
    state = watch.read()
    assert state is not None and (state.version, state.adapter_path) == ("base", None)
    watch.accept(state)
    assert watch.poll() is None  # nothing changed
    registry.promote("v0001")
    new = watch.poll()
    assert new is not None and new.version == "v0001" and new.adapter_path == registry.adapter_path("v0001")
    watch.accept(new)
    assert watch.poll() is None
    registry.promote("v0002")
    registry.adapter_path("v0002").write_bytes(b"GGUF broken")
    assert watch.poll() is None and watch.current == new
    (registry.root / "serving.json").write_text("{not json")
    assert watch.poll() is None and watch.current == new


def test_throttled_polls_do_not_touch_the_disk(tmp_path: Path, registry: ModelRegistry) -> None:
    watch = AdapterWatch(registry.root, poll_s=3600.0)
    first = watch.poll()  # the first poll checks
    assert first is not None and first.version == "base"
    registry.promote("v0001")
    assert watch.poll() is None  # within the interval: not even a stat
    watch.retry()
    found = watch.poll()
    assert found is not None and found.version == "v0001"


@pytest.mark.slow
def test_configured_adapter_serves_until_the_registry_promotes(tmp_path: Path) -> None:
    empty = ModelRegistry(tmp_path / "empty")
    cfg = config(tmp_path, empty).model_copy(
        update={
            "local": config(tmp_path, empty).local.model_copy(
                update={"adapter_path": write_tiny_adapter(tmp_path / "cfg.gguf", seed=3), "adapter_version": "cfg-1"}
            )
        }
    )
    with Client(cfg) as client:
        configured_text, version = ask(client)
        assert version == "cfg-1"
        empty.add(None, metrics=METRICS)
        empty.promote("base")
        base_text, version = ask(client)
        assert version == "base" and base_text != configured_text


@pytest.mark.slow
def test_a_default_client_serves_what_a_default_retrain_promotes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """One data directory: the registry `router retrain` writes by default is the one `Client()` follows."""
    from finetune.config import RetrainConfig
    from router.config import default_registry_path

    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    assert RetrainConfig().registry_path == RetrainConfig.from_router_config().registry_path == default_registry_path()
    registry = ModelRegistry(RetrainConfig().registry_path)
    registry.add(None, metrics=METRICS)
    registry.add(write_tiny_adapter(tmp_path / "a.gguf", seed=0), metrics=METRICS)
    registry.promote("base")
    registry.promote("v0001")
    local = {"n_threads": 1, "n_ctx": 512, "reject_echo": False, "degenerate_min_span": 4000, "registry_poll_s": POLL_S}
    with Client(RouterConfig(local=local, cloud={"preimport": False}, warmup="lazy")) as client:
        adapted_text, version = ask(client)
        assert version == "v0001"
        registry.rollback()
        base_text, version = ask(client)
        assert version == "base" and base_text != adapted_text
    # An explicit adapter pins the model: the default registry is then not followed ...
    pinned = {**local, "adapter_path": write_tiny_adapter(tmp_path / "mine.gguf", seed=5), "adapter_version": "mine"}
    with Client(RouterConfig(local=pinned, cloud={"preimport": False}, warmup="lazy")) as client:
        assert ask(client)[1] == "mine"
    # ... unless the registry is named explicitly too.
    followed = {**pinned, "registry_path": str(registry.root)}
    with Client(RouterConfig(local=followed, cloud={"preimport": False}, warmup="lazy")) as client:
        assert ask(client) == (base_text, "base")
