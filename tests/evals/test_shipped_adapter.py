"""The adapter make demo serves: its checksum and evidence match its manifest, and llama.cpp loads it."""

from __future__ import annotations

import json

import pytest

from evals.ship_adapter import SHIPPED
from hybrid_common.files import sha256_file


def manifest() -> dict:
    return json.loads((SHIPPED / "manifest.json").read_text(encoding="utf-8"))


def test_checksum_and_evidence_match_the_manifest() -> None:
    m = manifest()
    assert sha256_file(SHIPPED / m["adapter_file"]) == m["adapter_sha256"]
    assert m["category_metrics"] and all(c["examples"] >= 30 for c in m["category_metrics"].values())
    assert sum(c["examples"] for c in m["category_metrics"].values()) == m["metrics"]["examples"] >= 200
    assert len(m["train_prompt_keys"]) == len(set(m["train_prompt_keys"])) > 500


@pytest.mark.slow
def test_the_router_serves_it_from_a_registry_with_its_evidence(tmp_path) -> None:
    from evals.demo import register_shipped_adapter
    from router import Client, RouterConfig

    version = register_shipped_adapter(tmp_path / "registry")
    config = RouterConfig(local={"registry_path": tmp_path / "registry", "n_threads": 1}, cloud={"preimport": False},
                          log={"path": tmp_path / "log.db"}, warmup="lazy")  # fmt: skip
    with Client(config) as client:
        r = client.chat.completions.create(model="local", messages=[{"role": "user", "content": "I need to close my account"}], max_tokens=24)
        assert r.router.adapter_version == version and r.choices[0].message.content.strip()
        assert client._engine.gate.verdict(client._engine.served_key(), "ACCOUNT").open
