"""make demo's figures count only answers a user would accept."""

from __future__ import annotations

from evals.demo import phase_figures


def _row(tier: str, *, degenerate: str | None = None, cost: float = 0.0, all_cloud: float = 0.01) -> dict:
    return {"tier": tier, "private": False, "degenerate": degenerate, "cost_usd": cost, "all_cloud_cost": all_cloud,
            "similarity": 0.8, "ttft_ms": 100.0, "latency_ms": 1000.0, "quality": None, "reason": "local_category", "text": "x"}  # fmt: skip


def test_a_local_stream_cut_short_is_neither_answered_locally_nor_saved() -> None:
    rows = [_row("local"), _row("local", degenerate="altered a number from the question"), _row("cloud", cost=0.01)]
    f = phase_figures(rows)
    assert f["nonprivate_local"] == 1 and f["local_cut_short"] == 1
    assert f["cost_routed_usd"] == 0.02 and round(f["saved_share"], 6) == round(1 - 0.02 / 0.03, 6)
