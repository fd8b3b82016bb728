"""RetrainConfig: read from the router's settings tree, generating as the router serves."""

from __future__ import annotations

import pytest


def test_retrain_table_travels_with_the_file(tmp_path, monkeypatch) -> None:
    """[retrain] is part of the settings tree, found by path or by $ROUTER_CONFIG alike."""
    from finetune.config import RetrainConfig
    from router.config import load_config

    path = tmp_path / "router.toml"
    path.write_text(
        f'[log]\npath = "{tmp_path / "log.db"}"\n[local]\ndefault_max_tokens = 99\n'
        '[routing]\nlocal_categories = ["ORDER"]\n[retrain]\nmin_new_examples = 7\n[retrain.gate]\nmin_improvement = 0.1\n'
    )
    by_path = RetrainConfig.from_router_config(path)
    monkeypatch.setenv("ROUTER_CONFIG", str(path))
    by_env = RetrainConfig.from_router_config()
    assert load_config().retrain["min_new_examples"] == 7
    for config in (by_path, by_env):
        assert (config.min_new_examples, config.gate.min_improvement) == (7, 0.1)
        assert config.log_path == tmp_path / "log.db" and config.categories == ["ORDER"]
        assert config.serving.default_max_tokens == 99  # evaluation generates as this router serves


def test_default_retrain_learns_every_category_and_old_eval_keys_say_where_they_went(tmp_path, monkeypatch) -> None:
    from finetune.config import RetrainConfig
    from router.errors import ConfigError

    monkeypatch.delenv("ROUTER_CONFIG", raising=False)
    assert RetrainConfig.from_router_config().categories is None  # no local categories: learn from all
    path = tmp_path / "router.toml"
    path.write_text("[retrain.evaluation]\nmax_tokens = 256\n")
    with pytest.raises(ConfigError, match="local.default_max_tokens"):
        RetrainConfig.from_router_config(path)


def test_rows_without_a_category_are_labelled_by_the_classifier_the_router_serves(tmp_path, classifier_path) -> None:
    from finetune.classifier_registry import ClassifierRegistry
    from finetune.config import RetrainConfig
    from router import RouterConfig

    fixed = RouterConfig(classifier={"path": classifier_path}, log={"path": tmp_path / "log.db"})
    assert RetrainConfig.from_router_config(fixed).label_with == classifier_path
    registry = ClassifierRegistry(tmp_path / "classifiers")
    followed = RouterConfig(classifier={"registry_path": registry.root}, log={"path": tmp_path / "log.db"})
    assert RetrainConfig.from_router_config(followed).label_with is None  # nothing promoted yet
    version = registry.add(classifier_path, categories=["A", "B"], source="test")
    registry.promote(version.version)
    assert RetrainConfig.from_router_config(followed).label_with == registry.artifact_path(version.version)
    assert RetrainConfig.from_router_config(followed, label_with=None).label_with is None  # a user can turn it off
