"""Canary rollout: the arm split, the sequential decision, and the registry's record of it."""

from __future__ import annotations

import json
import random
import threading
from pathlib import Path
from typing import Any

import pytest

from finetune.registry import ModelRegistry
from hybrid_common.errors import RouterError
from hybrid_common.serving_pointer import utc_now
from router.canary import CanaryJudge, CanarySpec, canary_arm, canary_spec, conversation_key, end_canary
from router.cli import main as router_main
from router.config import CanaryConfig
from tests.finetune.conftest import write_tiny_adapter

METRICS = {"similarity": 0.8}
# The canaries judged here start now: a fixed date would age past ``max_hours`` and be rolled back for its age.
STARTED = utc_now().isoformat()


def spec(share: float = 0.1, **extra: Any) -> CanarySpec:
    return CanarySpec("v0002", "v0001", share, STARTED, **extra)


# -- the split --------------------------------------------------------------------------------------


def test_the_split_is_stable_per_conversation_and_close_to_the_share() -> None:
    keys = [f"conversation {i}" for i in range(20_000)]
    arms = [canary_arm(k, spec(0.1)) for k in keys]
    assert arms == [canary_arm(k, spec(0.1)) for k in keys]
    assert 0.09 < arms.count("canary") / len(keys) < 0.11
    # Another canary draws other conversations (its own salt).
    other = CanarySpec("v0003", "v0001", 0.1, "2026-12-03T00:00:00+00:00")
    overlap = sum(a == b == "canary" for a, b in zip(arms, (canary_arm(k, other) for k in keys), strict=True))
    assert overlap < 0.2 * arms.count("canary")


def test_every_turn_of_a_conversation_has_the_same_key() -> None:
    first = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "I want to cancel my order"}]
    later = [*first, {"role": "assistant", "content": "Sure, which one?"}, {"role": "user", "content": "the one from last month"}]
    assert conversation_key(first) == conversation_key(later)
    assert conversation_key(first) != conversation_key([{"role": "user", "content": "I want to cancel my order"}])


def test_a_malformed_canary_block_is_no_canary() -> None:
    base = {"version": "v0001"}
    assert canary_spec(base) is None
    assert canary_spec({**base, "canary": {"version": "v0002", "share": 0.1}}) is None  # no start time
    assert canary_spec({**base, "canary": {"version": "v0002", "share": 1.5, "started_at": "x"}}) is None
    assert canary_spec({**base, "canary": {"version": "v0001", "share": 0.1, "started_at": "x"}}) is None  # itself
    good = canary_spec({**base, "canary": {"version": "v0002", "share": 0.1, "started_at": "x", "adapter_path": "a.gguf"}})
    assert good is not None and good.files == {"adapter_path": "a.gguf"}


# -- the judge --------------------------------------------------------------------------------------


def run(judge: CanaryJudge, canary: tuple[float, float, float], serving: tuple[float, float, float], seed: int, n: int = 20_000) -> tuple[str | None, int]:
    """Feed answers: each arm's (mean score, score spread, degenerate rate); every answer audited at 25 %."""
    rng = random.Random(seed)
    for i in range(n):
        arm = "canary" if rng.random() < judge.spec.share else "serving"
        mean, spread, degenerate_rate = canary if arm == "canary" else serving
        degenerate = rng.random() < degenerate_rate
        judge.observe_answer(arm, degenerate)
        if rng.random() < 0.25:
            judge.observe_audit(arm, min(1.0, max(0.0, rng.gauss(mean, spread))), degenerate)
        verdict = judge.decide()
        if verdict is not None:
            return verdict.action, judge.arms["canary"].served
    return None, judge.arms["canary"].served


def test_a_worse_canary_is_rolled_back_and_a_better_one_promoted() -> None:
    config = CanaryConfig()
    action, served = run(CanaryJudge(spec(0.2), config), canary=(0.70, 0.1, 0.0), serving=(0.83, 0.1, 0.0), seed=1)
    assert action == "rollback" and served <= 200
    action, served = run(CanaryJudge(spec(0.2), config), canary=(0.83, 0.1, 0.4), serving=(0.83, 0.1, 0.0), seed=2)
    assert action == "rollback" and served <= 100  # the guard sees every answer, audits only a quarter
    action, _ = run(CanaryJudge(spec(0.2), config), canary=(0.86, 0.1, 0.0), serving=(0.80, 0.1, 0.0), seed=3)
    assert action == "promote"


def test_an_equal_canary_is_rarely_rolled_back() -> None:
    """The stated error rate: a canary as good as the serving version is rolled back at most alpha of the time."""
    config = CanaryConfig()
    outcomes = [run(CanaryJudge(spec(0.2), config), canary=(0.83, 0.1, 0.01), serving=(0.83, 0.1, 0.01), seed=s)[0] for s in range(200)]
    assert outcomes.count("rollback") / len(outcomes) <= config.alpha
    assert outcomes.count("promote") >= 0.9 * len(outcomes)


def test_an_undecided_canary_is_rolled_back_at_its_limit() -> None:
    config = CanaryConfig(max_audits=40, margin=0.001)
    judge = CanaryJudge(spec(0.5), config)
    action, _ = run(judge, canary=(0.8, 0.2, 0.0), serving=(0.8, 0.2, 0.0), seed=4)
    assert action == "rollback" and judge.arms["canary"].audits == 40
    assert judge.evidence()["score_looks"] <= judge.max_score_looks


def test_a_canary_above_the_degenerate_ceiling_is_never_promoted() -> None:
    judge = CanaryJudge(spec(0.5), CanaryConfig(), max_degenerate_rate=0.05)
    action, _ = run(judge, canary=(0.9, 0.05, 0.08), serving=(0.8, 0.05, 0.06), seed=5)
    assert action != "promote"


# -- the registry -----------------------------------------------------------------------------------


@pytest.fixture
def registry(tmp_path: Path) -> ModelRegistry:
    registry = ModelRegistry(tmp_path / "registry")
    registry.add(write_tiny_adapter(tmp_path / "a1.gguf", seed=0), metrics=METRICS)
    registry.add(write_tiny_adapter(tmp_path / "a2.gguf", seed=1), metrics=METRICS)
    registry.add(write_tiny_adapter(tmp_path / "a3.gguf", seed=2), metrics=METRICS)
    registry.promote("v0001")
    return registry


def test_a_canary_is_started_once_and_ended_once(registry: ModelRegistry) -> None:
    registry.start_canary("v0002", 0.1, reason="offline gate passed")
    state = registry.serving_state()
    assert state["version"] == "v0001" and state["canary"]["version"] == "v0002"
    assert state["canary"]["adapter_sha256"] == registry.get("v0002").adapter_sha256
    with pytest.raises(RouterError, match="still running"):
        registry.start_canary("v0003", 0.1)
    with pytest.raises(RouterError, match="already the serving"):
        registry.start_canary("v0001", 0.1)
    running = canary_spec(state)
    assert running is not None
    # Two routers decide at once: the registry takes one decision.
    results: list[bool] = []
    threads = [threading.Thread(target=lambda a=a: results.append(end_canary(registry.root, running, a, reason="test"))) for a in ("promote", "rollback")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == [False, True]
    actions = [e["action"] for e in registry.history()]
    assert actions[-2] == "canary_start" and actions[-1] in ("canary_promote", "canary_rollback")
    assert "canary" not in registry.serving_state()


def test_a_promoted_canary_serves_and_rolls_back_to_the_version_before_it(registry: ModelRegistry) -> None:
    registry.start_canary("v0002", 0.25)
    running = canary_spec(registry.serving_state())
    assert end_canary(registry.root, running, "promote", reason="no worse", evidence={"canary": {"audits": 30}})
    state = registry.serving_state()
    assert (state["version"], state["previous"], state["adapter_sha256"]) == ("v0002", "v0001", registry.get("v0002").adapter_sha256)
    assert registry.history()[-1]["evidence"] == {"canary": {"audits": 30}}
    assert registry.rollback().version == "v0001"


def test_abort_and_manual_promote_by_cli(registry: ModelRegistry, capsys: pytest.CaptureFixture[str]) -> None:
    root = str(registry.root)
    assert router_main(["models", "promote", "v0002", "--canary", "0.2", "--registry", root]) == 0
    assert router_main(["models", "canary", "--registry", root]) == 0
    assert "canary v0002: 20% of local traffic beside v0001" in capsys.readouterr().out
    assert router_main(["models", "canary", "abort", "--registry", root, "--reason", "looked odd"]) == 0
    assert registry.serving_state()["version"] == "v0001" and "canary" not in registry.serving_state()
    assert registry.history()[-1]["action"] == "canary_abort" and registry.history()[-1]["reason"] == "looked odd"
    assert router_main(["models", "canary", "abort", "--registry", root]) == 1  # nothing running
    assert "no canary is running" in capsys.readouterr().err

    assert router_main(["models", "promote", "v0003", "--canary", "0.1", "--registry", root]) == 0
    assert router_main(["models", "canary", "promote", "--registry", root]) == 0
    assert registry.serving_state()["version"] == "v0003"
    assert registry.history()[-1]["action"] == "canary_promote"
    capsys.readouterr()
    assert router_main(["models", "list", "--registry", root]) == 0
    listing = capsys.readouterr().out
    assert "no canary running" in listing and "promote" in listing and "abort" in listing
    with pytest.raises(SystemExit):
        router_main(["models", "promote", "v0002", "--canary", "1.5", "--registry", root])


def test_promoting_another_version_retires_the_canary_in_the_history(registry: ModelRegistry) -> None:
    registry.start_canary("v0002", 0.1)
    registry.promote("v0003")
    state = registry.serving_state()
    assert state["version"] == "v0003" and "canary" not in state
    assert [e["action"] for e in registry.history()[-2:]] == ["canary_abort", "promote"]
    assert json.loads((registry.root / "serving.json").read_text())["previous"] == "v0001"


def test_router_stats_shows_the_running_canary_with_its_live_evidence_from_the_log(
    registry: ModelRegistry, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from router.traffic_log import LogRecord, TrafficLog

    registry.start_canary("v0002", 0.3)
    started = registry.serving_state()["canary"]["started_at"]
    log_path = tmp_path / "traffic.sqlite3"
    with TrafficLog(log_path) as log:
        log.record(LogRecord(id="r1", requested_model="auto", reason="local_category", stream=False, tier="local", category="ORDER"))
        for i in range(6):  # what a router logs for the canary (router._canary_serving): answers and audits per arm
            for version, similarity in (("v0002", 0.6), ("v0001", 0.8)):
                log.record_quality_sample(kind="canary_answer", category="ORDER", served_key=f"registry:{version}", similarity=0.0,
                                          degenerate=False, request_id=f"a{i}{version}", detail="latency_ms=120.0")
                log.record_quality_sample(kind="canary_audit", category="ORDER", served_key=f"registry:{version}",
                                          similarity=similarity, degenerate=False, request_id=f"a{i}{version}")
        assert len(log.canary_samples(since=started, served_keys=["registry:v0002", "registry:v0001"])) == 24
        assert not [s for s in log.quality_samples(per_category=100) if s["kind"].startswith("canary")]  # not the gate's
    config = tmp_path / "router.toml"
    config.write_text(f'[local]\nregistry_path = "{registry.root}"\n[log]\npath = "{log_path}"\n', encoding="utf-8")
    assert router_main(["--config", str(config), "stats"]) == 0
    out = capsys.readouterr().out
    assert "canary v0002: 30% of local traffic beside v0001" in out
    assert "live: score 0.6 vs 0.8 (audits 6 / 6" in out and "latency p50 120.0 vs 120.0 ms" in out
    # The report shows the same live evidence beside the registry's history.
    from router.config import load_config
    from router.report import build_report

    with TrafficLog(log_path) as log:
        page = build_report(log, load_config(str(config)))
    assert 'data-canary-live="1"' in page and "Running canary v0002" in page and "canary.audits=6" in page
