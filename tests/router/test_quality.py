"""The quality gate without models: evidence from the registry, the evidence store and live samples;
hysteresis; overrides; private categories; the policy's reasons."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from router import RouterConfig
from router._request import build_request
from router.config import QualityConfig
from router.policy import RoutingPolicy
from router.quality import CategoryEvidence, QualityGate, read_evidence_store, read_registry_evidence, write_evidence
from router.types import Reason

GOOD = {"similarity": 0.84, "degenerate_rate": 0.0, "examples": 30.0}
POOR = {"similarity": 0.55, "degenerate_rate": 0.6, "examples": 30.0}
FEW = {"similarity": 0.9, "degenerate_rate": 0.0, "examples": 5.0}


def write_version(registry: Path, version: str, category_metrics: dict) -> None:
    path = registry / "versions" / version
    path.mkdir(parents=True)
    (path / "version.json").write_text(json.dumps({"version": version, "category_metrics": category_metrics}))


def gate_over(evidence: dict[str | None, dict[str, dict]], **config: object) -> QualityGate:
    def offline(version: str | None) -> dict[str, CategoryEvidence]:
        return {
            c: CategoryEvidence(m["similarity"], m["degenerate_rate"], int(m["examples"]), f"test {version}")
            for c, m in evidence.get(version, {}).items()
        }

    return QualityGate(QualityConfig(**config), offline)


def test_registry_evidence_is_read_from_version_json(tmp_path: Path) -> None:
    write_version(tmp_path, "v0001", {"ORDER": GOOD, "REFUND": {"similarity": "bad"}})
    evidence = read_registry_evidence(tmp_path, "v0001")
    assert set(evidence) == {"ORDER"} and evidence["ORDER"].samples == 30 and evidence["ORDER"].source == "registry v0001"
    assert read_registry_evidence(tmp_path, "v0404") == {}


def test_evidence_store_round_trip(tmp_path: Path) -> None:
    path = write_evidence(tmp_path, "adapter:0123abcd", category_metrics={"ORDER": GOOD}, metrics=GOOD, source="frozen set")
    assert path.parent == tmp_path and json.loads(path.read_text())["source"] == "frozen set"
    assert read_evidence_store(tmp_path, "adapter:0123abcd")["ORDER"].similarity == pytest.approx(0.84)
    assert read_evidence_store(tmp_path, "model:other") == {}


def test_opens_and_closes_per_category_from_offline_metrics() -> None:
    gate = gate_over({"v1": {"ORDER": GOOD, "REFUND": POOR, "INVOICE": FEW}})
    assert gate.verdict("v1", "ORDER").open
    refund = gate.verdict("v1", "REFUND")
    assert not refund.open and refund.reason is Reason.LOCAL_QUALITY_BELOW_FLOOR and "similarity 0.550" in refund.detail
    invoice = gate.verdict("v1", "INVOICE")
    assert not invoice.open and invoice.reason is Reason.LOCAL_QUALITY_UNPROVEN and "5 samples" in invoice.detail
    unknown = gate.verdict("v1", "CONTACT")
    assert unknown.reason is Reason.LOCAL_QUALITY_UNPROVEN and "router evaluate" in unknown.detail


def test_a_new_served_version_is_judged_on_its_own_evidence() -> None:
    """Promotion and rollback change the key: the gate re-decides without a restart."""
    gate = gate_over({"base": {"ORDER": POOR}, "v1": {"ORDER": GOOD}})
    assert not gate.verdict("base", "ORDER").open
    assert gate.verdict("v1", "ORDER").open  # promoted
    assert not gate.verdict("base", "ORDER").open  # rolled back


def test_live_samples_decide_once_there_are_enough_and_withdraw_a_falling_category() -> None:
    gate = gate_over({"v1": {"ORDER": GOOD}}, min_samples=10, live_window=10)
    assert gate.verdict("v1", "ORDER").open
    for _ in range(9):  # below min_samples: offline evidence still decides
        assert gate.record("v1", "ORDER", 0.3, degenerate=True).open
    withdrawn = gate.record("v1", "ORDER", 0.3, degenerate=True)
    assert not withdrawn.open and withdrawn.reason is Reason.LOCAL_QUALITY_BELOW_FLOOR and "(live)" in withdrawn.detail


def test_hysteresis_keeps_a_category_from_flapping_near_the_floor() -> None:
    gate = gate_over({}, min_samples=4, live_window=4, min_similarity=0.75, margin=0.05, max_degenerate_rate=0.1)
    for _ in range(4):
        verdict = gate.record("v1", "ORDER", 0.76, degenerate=False)
    assert verdict.open  # first judgement: at the floor is enough
    for score in (0.72, 0.72, 0.72, 0.72):  # below the floor but within the margin: stays open
        verdict = gate.record("v1", "ORDER", score, degenerate=False)
    assert verdict.open
    for _ in range(4):  # clearly below: closes
        verdict = gate.record("v1", "ORDER", 0.6, degenerate=False)
    assert not verdict.open
    for _ in range(4):  # back at the floor is not enough to reopen ...
        verdict = gate.record("v1", "ORDER", 0.77, degenerate=False)
    assert not verdict.open
    for _ in range(4):  # ... floor + margin is
        verdict = gate.record("v1", "ORDER", 0.81, degenerate=False)
    assert verdict.open


def test_overrides_and_switching_the_gate_off() -> None:
    gate = gate_over({"v1": {"ORDER": GOOD, "REFUND": POOR}}, overrides={"ORDER": "distrust", "REFUND": "trust"})
    assert not gate.verdict("v1", "ORDER").open and gate.verdict("v1", "ORDER").reason is Reason.LOCAL_QUALITY_DISTRUSTED
    assert gate.verdict("v1", "REFUND").open
    assert gate_over({}, enabled=False).verdict("v1", "ANY").open


# -- the policy with a gate ---------------------------------------------------------------------------


def req(text: str = "where is my order", model: str = "auto"):
    return build_request(max_input_chars=10_000, model=model, messages=[{"role": "user", "content": text}])


def policy(**quality: object) -> RoutingPolicy:
    return RoutingPolicy(
        RouterConfig(routing={"local_categories": ["ORDER", "REFUND"], "private_categories": ["ACCOUNT"]}, quality=quality)
    )


def test_policy_sends_unproven_and_poor_categories_to_the_cloud_with_figures() -> None:
    gate = gate_over({"v1": {"ORDER": GOOD, "REFUND": POOR}})
    verdict = lambda c: gate.verdict("v1", c)  # noqa: E731
    decide = policy().decide
    assert decide(req(), category="ORDER", has_classifier=True, gate=verdict).tier == "local"
    poor = decide(req(), category="REFUND", has_classifier=True, gate=verdict)
    assert (poor.tier, poor.reason) == ("cloud", Reason.LOCAL_QUALITY_BELOW_FLOOR) and "0.550" in poor.detail
    forced = decide(req(model="local"), category="REFUND", has_classifier=True, gate=verdict)
    assert (forced.tier, forced.reason) == ("local", Reason.FORCED_LOCAL)  # model="local" still forces


def test_private_categories_never_leave_whatever_the_quality() -> None:
    gate = gate_over({"v1": {"ACCOUNT": POOR}})
    verdict = lambda c: gate.verdict("v1", c)  # noqa: E731
    flagged = policy().decide(req(), category="ACCOUNT", has_classifier=True, gate=verdict)
    assert (flagged.tier, flagged.private, flagged.quality) == ("local", True, "below_floor")
    handed = policy(private_unproven="handoff").decide(req(), category="ACCOUNT", has_classifier=True, gate=verdict)
    assert (handed.tier, handed.reason, handed.private) == ("handoff", Reason.PRIVATE_HANDOFF, True)
    pii = policy(private_unproven="handoff").decide(req("mail jane@example.com"), category=None, has_classifier=True, gate=verdict)
    assert (pii.tier, pii.reason, pii.quality) == ("local", Reason.PII_MATCH, "unproven")  # hand-off is for categories
    proven = gate_over({"v1": {"ACCOUNT": GOOD}})
    ok = policy().decide(req(), category="ACCOUNT", has_classifier=True, gate=lambda c: proven.verdict("v1", c))
    assert (ok.tier, ok.quality) == ("local", None)


def test_offline_evidence_is_reread_so_new_figures_reach_a_running_router(tmp_path: Path) -> None:
    reads: list[str | None] = []

    def offline(version: str | None) -> dict[str, CategoryEvidence]:
        reads.append(version)
        return read_evidence_store(tmp_path, "model:m")

    gate = QualityGate(QualityConfig(), offline, refresh_s=0.0)
    assert not gate.verdict("model:m", "ORDER").open
    write_evidence(tmp_path, "model:m", category_metrics={"ORDER": GOOD}, metrics=GOOD, source="test")
    assert gate.verdict("model:m", "ORDER").open and len(reads) >= 2
    cached = QualityGate(QualityConfig(), offline, refresh_s=3600.0)
    cached.verdict("model:m", "ORDER")
    before = len(reads)
    cached.verdict("model:m", "ORDER")
    assert len(reads) == before  # within the refresh interval: no file read


def test_router_evaluate_prints_the_gate_s_own_verdicts(tmp_path: Path) -> None:
    from finetune.evaluate import EvalReport
    from finetune.evidence import EvidenceResult, format_report

    report = EvalReport(metrics=GOOD, answers=[], by_category={"ORDER": GOOD, "REFUND": POOR, "INVOICE": FEW})
    text = format_report(EvidenceResult("model:m", tmp_path / "model_m.json", report), RouterConfig(quality={"overrides": {"INVOICE": "trust"}}))
    lines = {line.split()[0]: line for line in text.splitlines()[2:]}
    assert lines["ORDER"].endswith("open") and lines["REFUND"].endswith("local_quality_below_floor")
    assert lines["INVOICE"].endswith("open")  # the override applies here too: one rule


def test_a_renamed_or_merged_category_keeps_the_evidence_of_its_earlier_names() -> None:
    gate = gate_over({"v1": {"REFUND_MONEY": GOOD, "DOLLARS_EXPECT": POOR}})
    assert gate.verdict("v1", "REFUNDS").reason is Reason.LOCAL_QUALITY_UNPROVEN
    gate.set_aliases({"REFUNDS": ["REFUND_MONEY"], "TRACKING": ["DOLLARS_EXPECT"]})
    assert gate.verdict("v1", "REFUNDS").open
    tracking = gate.verdict("v1", "TRACKING")
    assert not tracking.open and tracking.reason is Reason.LOCAL_QUALITY_BELOW_FLOOR
    for _ in range(30):  # live evidence under the new name takes over once there is enough
        gate.record("v1", "TRACKING", 0.9, False)
    assert gate.verdict("v1", "TRACKING").open
