from __future__ import annotations

import pytest

from router import ConfigError, RouterConfig, load_config


def test_defaults_work_offline() -> None:
    config = RouterConfig()
    assert config.local.backend == "llama_cpp" and config.classifier.path is None


def test_toml_then_environment_precedence(tmp_path, monkeypatch) -> None:
    path = tmp_path / "router.toml"
    path.write_text(
        '[cloud]\ndefault_model = "from-file"\n[routing]\nlocal_categories = ["ORDER"]\n'
        '[models.gpt-4o]\nlitellm_model = "openai/x"\napi_base = "http://127.0.0.1:1/v1"\n'
    )
    config = RouterConfig.from_toml(path)
    assert config.cloud.default_model == "from-file"
    assert config.route_for("gpt-4o").litellm_model == "openai/x"
    assert config.route_for("claude-x").litellm_model == "claude-x"
    monkeypatch.setenv("ROUTER_CLOUD__DEFAULT_MODEL", "from-env")
    assert RouterConfig.from_toml(path).cloud.default_model == "from-env"
    monkeypatch.setenv("ROUTER_CONFIG", str(path))
    assert load_config().routing.local_categories == ["ORDER"]


def test_invalid_config_names_the_field(tmp_path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text('[local]\nn_ctx = -5\n[routing.pii_patterns]\nbroken = "(("\n')
    with pytest.raises(ConfigError) as info:
        RouterConfig.from_toml(path)
    assert "local.n_ctx" in str(info.value) and "broken" in str(info.value)


def test_missing_and_malformed_files(tmp_path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        RouterConfig.from_toml(tmp_path / "nope.toml")
    (tmp_path / "x.toml").write_text("[[[")
    with pytest.raises(ConfigError, match="not valid TOML"):
        RouterConfig.from_toml(tmp_path / "x.toml")


def test_unknown_keys_are_rejected() -> None:
    with pytest.raises(ConfigError):
        load_config(None, locall={"backend": "x"})


def test_one_data_directory_for_log_and_registry(tmp_path, monkeypatch) -> None:
    from router.config import LocalConfig, RouterConfig, data_dir

    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path))
    config = RouterConfig()
    assert data_dir() == tmp_path / "hybrid-router"
    assert config.log.path == data_dir() / "traffic.sqlite3"
    assert config.local.registry_path == config.local.followed_registry == data_dir() / "registry"
    # An explicit adapter pins the model unless a registry is named too; None never follows one.
    assert LocalConfig(adapter_path=tmp_path / "a.gguf").followed_registry is None
    assert LocalConfig(adapter_path=tmp_path / "a.gguf", registry_path=tmp_path / "r").followed_registry == tmp_path / "r"
    assert LocalConfig(registry_path=None).followed_registry is None


def test_answer_tokens_and_guard_are_one_rule_for_serving_and_evaluation() -> None:
    from router.config import LocalConfig

    local = LocalConfig(default_max_tokens=100, max_tokens=200, degenerate_min_span=12, reject_echo=False)
    assert (local.answer_tokens(None), local.answer_tokens(50), local.answer_tokens(500)) == (100, 50, 200)
    guard = local.new_guard("where is my order")
    assert guard.check_final("where is my order") is None  # reject_echo off
    assert guard.check_partial("ab" * 6) == "repetition loop"  # 12 characters of one unit



def test_stream_hold_is_the_question_plus_the_margin_unless_turned_off() -> None:
    question = "where is my order?"
    held = RouterConfig(local={"stream_hold_back_chars": 48}).local
    assert held.hold_back_for(question) == 48 + len(question)
    assert held.hold_back_for("x" * 10_000) == 2000  # capped for huge prompts
    # stream_hold_back_chars = 0 still holds the question's length: only stream_hold = false sends at once.
    assert RouterConfig(local={"stream_hold_back_chars": 0}).local.hold_back_for(question) == len(question)
    assert RouterConfig(local={"stream_hold": False}).local.hold_back_for(question) == 0
