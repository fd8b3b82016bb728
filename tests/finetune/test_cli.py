"""``router models`` and ``router retrain``: the subcommands finetune adds to the router CLI by entry point."""

from __future__ import annotations

from router.cli import main


def _registry_with_versions(root):
    from finetune.registry import ModelRegistry
    from tests.finetune.conftest import write_tiny_adapter

    registry = ModelRegistry(root)
    registry.add(None, metrics={"similarity": 0.61, "rouge_l": 0.21, "degenerate_rate": 0.0})
    registry.add(write_tiny_adapter(root.parent / "a.gguf"), metrics={"similarity": 0.70, "rouge_l": 0.25, "degenerate_rate": 0.02}, dataset_id="snap-1")
    registry.promote("base")
    return registry


def test_models_list_promote_rollback(tmp_path, capsys) -> None:
    registry = _registry_with_versions(tmp_path / "reg")
    reg = ["--registry", str(registry.root)]
    assert main(["models", "list", *reg]) == 0
    out = capsys.readouterr().out
    assert "serving base" in out and "* base" in out and "  v0001" in out and "0.700" in out and "2.0%" in out and "snap-1" in out

    assert main(["models", "promote", "v0001", *reg]) == 0
    assert "v0001 now serving (was base)" in capsys.readouterr().out
    assert registry.serving().version == "v0001"
    assert main(["models", "list", *reg]) == 0
    assert "* v0001" in capsys.readouterr().out

    assert main(["models", "rollback", *reg, "--reason", "bad answers"]) == 0
    assert "base now serving (was v0001)" in capsys.readouterr().out
    assert registry.history()[-1]["reason"] == "bad answers"
    assert main(["models", "rollback", *reg]) == 1
    assert "nothing to roll back" in capsys.readouterr().err


def test_models_errors_and_config_default(tmp_path, capsys, monkeypatch) -> None:
    registry = _registry_with_versions(tmp_path / "reg")
    assert main(["models", "promote", "v0042", "--registry", str(registry.root)]) == 1
    assert "no version 'v0042'" in capsys.readouterr().err
    adapter = registry.adapter_path("v0001")
    adapter.write_bytes(b"GGUF tampered")
    assert main(["models", "promote", "v0001", "--registry", str(registry.root)]) == 1
    assert "sha256" in capsys.readouterr().err
    assert registry.serving().version == "base"

    # Without --registry: local.registry_path from the configuration, else the data directory's.
    config = tmp_path / "r.toml"
    config.write_text(f'[local]\nregistry_path = "{registry.root}"\n')
    assert main(["--config", str(config), "models", "list"]) == 0
    assert "* base" in capsys.readouterr().out
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    monkeypatch.chdir(tmp_path)
    assert main(["models", "list"]) == 1
    assert str(tmp_path / "data" / "hybrid-router" / "registry") in capsys.readouterr().err


def test_a_registry_at_the_old_default_path_is_pointed_out(tmp_path, capsys, monkeypatch) -> None:
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    monkeypatch.chdir(tmp_path)
    _registry_with_versions(tmp_path / ".router" / "registry")
    assert main(["models", "list"]) == 1
    err = capsys.readouterr().err
    new = tmp_path / "data" / "hybrid-router" / "registry"
    assert f"mv '{tmp_path / '.router' / 'registry'}' '{new}'" in err
    # Following the note's own command makes the registry found at the new default.
    import subprocess

    subprocess.run(err.split("move it with: ", 1)[1].splitlines()[0], shell=True, check=True)
    assert main(["models", "list"]) == 0
    assert "* base" in capsys.readouterr().out


def test_retrain_without_data_exits_2(tmp_path, capsys) -> None:
    config = tmp_path / "r.toml"
    config.write_text(f'[log]\npath = "{tmp_path / "missing.sqlite3"}"\n[local]\nregistry_path = "{tmp_path / "reg"}"\n')
    assert main(["--config", str(config), "retrain", "--dry-run"]) == 2
    assert "no traffic log" in capsys.readouterr().err


def test_classifiers_list_promote_rollback(tmp_path, capsys, classifier_path) -> None:
    from finetune.classifier_registry import ClassifierRegistry

    registry = ClassifierRegistry(tmp_path / "classifiers")
    for note in ("first", "second"):
        registry.add(classifier_path, categories=["ORDER", "PAYMENT"], source="test", metrics={"accuracy": 0.875}, note=note)
    reg = ["--registry", str(registry.root)]
    assert main(["classifiers", "list", *reg]) == 0
    out = capsys.readouterr().out
    assert "2 versions, serving nothing" in out and "  v0001" in out and "0.875" in out and "test / second" in out

    assert main(["classifiers", "promote", "v0001", *reg]) == 0
    assert "v0001 now serving (was nothing)" in capsys.readouterr().out
    assert main(["classifiers", "promote", "v0002", *reg, "--reason", "better"]) == 0
    assert registry.serving_state()["version"] == "v0002" and registry.history()[-1]["reason"] == "better"
    # Without --registry: classifier.registry_path from the configuration.
    config = tmp_path / "r.toml"
    config.write_text(f'[classifier]\nregistry_path = "{registry.root}"\n')
    assert main(["--config", str(config), "classifiers", "list"]) == 0
    assert "* v0002" in capsys.readouterr().out
    assert main(["--config", str(config), "classifiers", "rollback"]) == 0
    assert "v0001 now serving (was v0002)" in capsys.readouterr().out
    assert registry.history()[-1]["reason"] == "manual rollback (router classifiers rollback)"
    assert main(["classifiers", "rollback", *reg]) == 1
    assert "nothing to roll back" in capsys.readouterr().err
    assert main(["classifiers", "promote", "v0042", *reg]) == 1
    assert "no version 'v0042'" in capsys.readouterr().err


def test_classifiers_default_to_the_data_directory_s_registry(tmp_path, capsys, monkeypatch) -> None:
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    monkeypatch.chdir(tmp_path)
    assert main(["classifiers", "list"]) == 1
    assert f"no classifier registry at {tmp_path / 'data' / 'hybrid-router' / 'classifiers'}" in capsys.readouterr().err


def test_retrain_full_reads_the_whole_log_again(tmp_path, capsys) -> None:
    from router.traffic_log import LogRecord, TrafficLog

    log_path = tmp_path / "log.sqlite3"
    with TrafficLog(log_path) as log:
        for i in range(3):
            log.record(LogRecord(id=f"r{i}", requested_model="auto", reason="x", stream=False, tier="cloud", category="ORDER",
                                 messages=[{"role": "user", "content": f"Where is my order number {i}?"}],
                                 response="It left our warehouse yesterday and arrives within two days.", finish_reason="stop"))  # fmt: skip
    config = tmp_path / "r.toml"
    config.write_text(f'[log]\npath = "{log_path}"\n[local]\nregistry_path = "{tmp_path / "reg"}"\n')
    assert main(["--config", str(config), "retrain", "--dry-run"]) == 0
    assert "log: whole log read, 3 rows (pool 3 examples)" in capsys.readouterr().out
    assert main(["--config", str(config), "retrain", "--dry-run"]) == 0
    assert "log: 0 new rows since rowid 3 (pool 3 examples)" in capsys.readouterr().out
    assert main(["--config", str(config), "retrain", "--dry-run", "--full"]) == 0
    assert "log: whole log read, 3 rows (pool 3 examples)" in capsys.readouterr().out
