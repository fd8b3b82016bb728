"""The second local backend: a self-hosted OpenAI-compatible endpoint serving the local tier."""

from __future__ import annotations

import pytest

from router import Client, ConfigError, RouterConfig
from router.backends import available_local_backends
from tests.conftest import user


def test_registry_lists_both_backends() -> None:
    assert {"llama_cpp", "openai_compatible"} <= set(available_local_backends())


def test_unknown_backend_is_a_config_error(tmp_path) -> None:
    with pytest.raises(ConfigError, match="unknown local backend"):
        Client(RouterConfig(local={"backend": "nope"}, warmup="lazy", log={"path": tmp_path / "log.db"}))


@pytest.mark.slow
def test_local_tier_served_by_an_endpoint_with_our_template(make_config, standin) -> None:
    local = {"backend": "openai_compatible", "base_url": standin.api_base, "remote_model": "standin", "reject_echo": False}
    with Client(make_config(local=local)) as client:
        before = len(standin.received())
        r = client.chat.completions.create(model="local", messages=[{"role": "system", "content": "Be brief."}, *user("hello")], max_tokens=4)
        assert (r.router.tier, r.router.backend, r.model) == ("local", "openai_compatible", "standin")
        assert r.usage.completion_tokens >= 1
        sent = standin.received()[before:]
    assert sent[0]["path"] == "/v1/completions"
    assert sent[0]["body"]["prompt"].startswith("<start_of_turn>user\nBe brief.\n\nhello<end_of_turn>")
