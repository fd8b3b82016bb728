"""The fleet path: the local tier served by a separate server that serves adapters by model name.

The server here is llama-cpp-python's own (``evals.standin_cloud`` in adapter mode): several model
aliases, each with its own ``lora_path``, the way vLLM ``--enable-lora`` and llama.cpp's server
expose adapters. The router follows the model registry and sends the promoted version's name; a
promotion and a rollback while requests are flowing switch the name, and the name each request
carried (the server's record) is checked against the version the router reported for it.
"""

from __future__ import annotations

import itertools
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from evals.standin_cloud import StandinCloud
from finetune.registry import ModelRegistry
from hybrid_common.chat import render_prompt
from router import Client, ConfigError, RouterConfig
from tests.finetune.conftest import write_tiny_adapter

QUESTION = [{"role": "user", "content": "Where is my order?"}]
METRICS = {"similarity": 0.5}
ALIASES = {"base": "support-base", "v0001": "support-v0001", "v0002": "support-v0002"}


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """A registry of base + two adapters, and a server serving each under its own name (recording
    every request body, so the test sees the name each request asked for)."""
    root = tmp_path_factory.mktemp("fleet")
    registry = ModelRegistry(root / "registry")
    registry.add(None, metrics=METRICS)
    registry.add(write_tiny_adapter(root / "a1.gguf", seed=0), metrics=METRICS)
    registry.add(write_tiny_adapter(root / "a2.gguf", seed=1), metrics=METRICS)
    registry.promote("base")
    adapters = {alias: registry.adapter_path(version) for version, alias in ALIASES.items()}
    with StandinCloud(adapters=adapters, n_ctx=512, record=root / "requests.jsonl") as server:
        yield {"registry": registry, "base_url": server.api_base, "root": root, "server": server}


def _direct_answer(base_url: str, alias: str) -> str:
    body = {"model": alias, "prompt": render_prompt(QUESTION), "max_tokens": 8, "temperature": 0, "stop": ["<end_of_turn>"]}
    return httpx.post(f"{base_url}/completions", json=body, timeout=120).json()["choices"][0]["text"]


def _config(fleet: dict[str, Any]) -> RouterConfig:
    return RouterConfig(
        local={
            "backend": "openai_compatible", "base_url": fleet["base_url"], "remote_model": ALIASES["base"],
            "remote_adapter_model": "support-{version}", "registry_path": fleet["registry"].root, "registry_poll_s": 0.05,
            "reject_echo": False, "degenerate_min_span": 4000, "timeout_s": 120,
        },
        cloud={"preimport": False}, log={"path": fleet["root"] / "traffic.sqlite3"}, warmup="lazy",
    )  # fmt: skip


def test_the_name_template_needs_a_version_slot() -> None:
    with pytest.raises(ValueError, match=r"\{version\}"):
        RouterConfig(local={"remote_adapter_model": "support"})


def test_following_a_registry_by_name_needs_one(tmp_path: Path) -> None:
    config = RouterConfig(
        local={"backend": "openai_compatible", "base_url": "http://127.0.0.1:9/v1", "remote_model": "m",
               "remote_adapter_model": "m-{version}", "registry_path": None},
        log={"path": tmp_path / "log.db"}, warmup="lazy",
    )  # fmt: skip
    with pytest.raises(ConfigError, match="registry"):
        Client(config)


@pytest.mark.slow
def test_promotion_and_rollback_switch_the_served_name_under_traffic(fleet: dict[str, Any]) -> None:
    registry: ModelRegistry = fleet["registry"]
    served: dict[str, str | None] = {}  # question -> the adapter version the router reported
    errors: list[BaseException] = []
    stop = threading.Event()
    numbers = itertools.count()

    with Client(_config(fleet)) as client:

        def caller() -> None:
            while not stop.is_set():
                question = f"Where is my order number {next(numbers)}?"
                try:
                    r = client.chat.completions.create(model="local", messages=[{"role": "user", "content": question}], max_tokens=4)
                    served[question] = r.router.adapter_version
                except BaseException as err:  # noqa: BLE001 - handed to the test
                    errors.append(err)

        def wait_for(version: str) -> None:
            deadline = time.monotonic() + 120
            seen = set(served)
            while time.monotonic() < deadline:
                if any(v == version for q, v in list(served.items()) if q not in seen):
                    return
                time.sleep(0.05)
            raise AssertionError(f"no answer from {version} within 120 s")

        threads = [threading.Thread(target=caller) for _ in range(2)]
        for t in threads:
            t.start()
        try:
            wait_for("base")
            registry.promote("v0001")
            wait_for("v0001")
            registry.promote("v0002")
            wait_for("v0002")
            registry.rollback()
            wait_for("v0001")
        finally:
            stop.set()
            for t in threads:
                t.join(120)
    assert not errors, errors
    asked = {}  # question -> the model name the server received
    for entry in fleet["server"].received():
        prompt = entry["body"].get("prompt", "")
        for question in served:
            if f"\n{question}<end_of_turn>" in prompt:
                asked[question] = entry["body"]["model"]
    assert set(asked) == set(served)
    assert {v for v in served.values()} == {"base", "v0001", "v0002"}
    wrong = {q: (v, asked[q]) for q, v in served.items() if asked[q] != ALIASES[v]}
    assert not wrong, f"requests whose model name is not the reported version's: {wrong}"
    # Each version's answers are the server's own for that name (the adapters differ, so names matter).
    assert len({_direct_answer(fleet["base_url"], alias) for alias in ALIASES.values()}) == 3
