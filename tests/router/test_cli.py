"""The `router` command's own subcommands: config (with plugin tables), stats, and plugin discovery."""

from __future__ import annotations

from router.cli import main
from router.traffic_log import LogRecord, TrafficLog


def test_config_prints_validated_config_and_masks_secrets(tmp_path, capsys) -> None:
    path = tmp_path / "r.toml"
    path.write_text('[models.gpt-4o]\nlitellm_model = "openai/gpt-4o"\napi_key = "sk-secret-value-1234567890"\n')
    assert main(["--config", str(path), "config"]) == 0
    out = capsys.readouterr().out
    assert '"litellm_model": "openai/gpt-4o"' in out and "sk-secret" not in out


def test_bad_config_exits_2(tmp_path, capsys) -> None:
    path = tmp_path / "r.toml"
    path.write_text("[local]\nn_ctx = 1\n")
    assert main(["--config", str(path), "config"]) == 2
    assert "local.n_ctx" in capsys.readouterr().err


def test_stats_summarises_the_log(tmp_path, capsys) -> None:
    db = tmp_path / "t.db"
    with TrafficLog(db) as log:
        log.record(LogRecord(id="a", requested_model="auto", reason="local_category", stream=False, tier="local", category="ORDER", cost_usd=0.0, cloud_cost_usd_estimate=0.01))
        log.record(LogRecord(id="b", requested_model="auto", reason="edge_case", stream=False, tier="cloud", cost_usd=0.01, cloud_cost_usd_estimate=0.01))
    assert main(["stats", "--log", str(db)]) == 0
    out = capsys.readouterr().out
    assert "2 requests" in out and "ORDER" in out and "50% saved" in out
    assert main(["stats", "--log", str(tmp_path / "missing.db")]) == 1


def test_stats_counts_reasons_and_the_local_busy_spill_on_request(tmp_path, capsys) -> None:
    db = tmp_path / "t.db"
    with TrafficLog(db) as log:
        for i, reason in enumerate(["local_category"] * 3 + ["local_busy"] + ["edge_case"] * 2):
            tier = "local" if reason == "local_category" else "cloud"
            log.record(LogRecord(id=f"r{i}", requested_model="auto", reason=reason, stream=False, tier=tier, category="ORDER"))
    assert main(["stats", "--log", str(db)]) == 0
    assert "local_busy" not in capsys.readouterr().out  # the default stays on the running totals
    assert main(["stats", "--log", str(db), "--reasons"]) == 0
    out = capsys.readouterr().out
    assert "local_busy spill: 1 of 4 routed local decisions (25%)" in out
    assert main(["stats", "--log", str(db), "--reasons", "--since", "2001-01-01", "--until", "2001-12-31"]) == 0
    assert "spill" not in capsys.readouterr().out  # no request in that window


def test_config_validates_the_retrain_table_whichever_way_the_file_is_found(tmp_path, capsys, monkeypatch) -> None:
    """[retrain] is checked by the plugin that owns it, with --config and with $ROUTER_CONFIG alike."""
    path = tmp_path / "r.toml"
    path.write_text("[retrain]\nmin_new_examples = 0\n")
    assert main(["--config", str(path), "config"]) == 2
    assert "retrain.min_new_examples" in capsys.readouterr().err
    monkeypatch.setenv("ROUTER_CONFIG", str(path))
    assert main(["config"]) == 2
    assert "retrain.min_new_examples" in capsys.readouterr().err
    path.write_text("[retrain]\nmin_new_examples = 7\n")
    assert main(["config"]) == 0
    assert '"min_new_examples": 7' in capsys.readouterr().out


def test_plugin_commands_come_from_entry_points() -> None:
    from importlib.metadata import entry_points

    from router.cli import COMMANDS_GROUP, build_parser

    names = {e.name for e in entry_points(group=COMMANDS_GROUP)}
    assert {"models", "retrain"} <= names
    help_text = build_parser().format_help()
    assert all(name in help_text for name in names)


def test_stats_notes_a_log_left_at_the_old_default_path(tmp_path, capsys, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    old = tmp_path / ".router" / "traffic.sqlite3"
    with TrafficLog(old) as log:
        log.record(LogRecord(id="a", requested_model="auto", reason="edge_case", stream=False, tier="cloud"))
    assert main(["stats"]) == 1
    err = capsys.readouterr().err
    assert f"mv '{old}' '{tmp_path / 'data' / 'hybrid-router' / 'traffic.sqlite3'}'" in err


def test_stats_shows_the_gate_and_live_quality_per_category(tmp_path, capsys) -> None:
    from router.quality import write_evidence

    db = tmp_path / "t.db"
    with TrafficLog(db) as log:
        log.record(LogRecord(id="a", requested_model="auto", reason="local_category", stream=False, tier="local", category="ORDER"))
        log.record(LogRecord(id="b", requested_model="auto", reason="local_quality_unproven", stream=False, tier="cloud", category="REFUND"))
        for _ in range(3):
            log.record_quality_sample(kind="shadow", category="REFUND", served_key="model:gemma-3-270m-q4_k_m", similarity=0.4, degenerate=True)
        log.record_quality_sample(
            kind="audit", category="ORDER", served_key="model:gemma-3-270m-q4_k_m", similarity=0.9, degenerate=False, cost_usd=0.0125
        )
        log.record_quality_sample(kind="audit", category="ORDER", served_key="registry:v0009", similarity=0.1, degenerate=False, cost_usd=5.0)
    evidence = tmp_path / "evidence"
    write_evidence(evidence, "model:gemma-3-270m-q4_k_m", category_metrics={"ORDER": {"similarity": 0.83, "degenerate_rate": 0.0, "examples": 30}}, metrics={}, source="test")
    config = tmp_path / "r.toml"
    config.write_text(
        f'[log]\npath = "{db}"\n[local]\nregistry_path = "{tmp_path / "none"}"\n[routing]\nlocal_categories = ["ORDER", "REFUND"]\n'
        f'[quality]\nevidence_dir = "{evidence}"\nmin_samples = 3\n'
    )
    assert main(["--config", str(config), "stats"]) == 0
    out = capsys.readouterr().out
    assert "quality gate for model:gemma-3-270m-q4_k_m" in out
    order = next(line for line in out.splitlines() if line.startswith("ORDER") and "open" in line)
    assert "0.830" in order
    refund = next(line for line in out.splitlines() if line.startswith("REFUND") and "closed" in line)
    assert "0.400" in refund and "shadow 3 (0.40)" in refund and "local_quality_below_floor" in refund
    assert "audit 1 (0.90)" in order  # only the serving model's samples count
    assert "audit answers: 1 cloud calls, $0.0125" in out
