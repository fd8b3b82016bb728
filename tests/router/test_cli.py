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
