"""The conversation benchmark's report: the local share the labels allow, beside the one served."""

from __future__ import annotations

from evals.conversation_eval import attainable_local_share, serving_figures


def _row(position: int, label: str | None, tier: str, *, private: bool = False) -> dict:
    return {"position": position, "label": label, "tier": tier, "private": private, "kind": "first" if position == 0 else "anaphoric",
            "reason": "local_category" if tier == "local" else "edge_case", "degenerate": None, "fallback_reason": None}  # fmt: skip


def test_the_attainable_share_counts_local_labels_among_open_ones() -> None:
    rows = [_row(1, "ORDER", "cloud"), _row(1, None, "cloud"), _row(1, "FEEDBACK", "cloud"), _row(1, "PAYMENT", "local", private=True)]
    assert attainable_local_share(rows, ["ORDER"], ["PAYMENT"]) == 1 / 3
    assert attainable_local_share([_row(1, "PAYMENT", "local")], ["ORDER"], ["PAYMENT"]) is None


def test_serving_figures_report_the_share_served_beside_the_share_the_labels_allow() -> None:
    served = [_row(0, "ORDER", "local"), _row(0, "REFUND", "local"), _row(1, "ORDER", "local"), _row(1, None, "cloud"),
              _row(1, "ORDER", "cloud"), _row(1, "PAYMENT", "local", private=True)]  # fmt: skip
    figures = serving_figures(served)
    assert figures["first_turns"]["local_share"] == figures["first_turns"]["attainable_local_share"] == 1.0
    assert figures["followups"]["local_share"] == 1 / 3 and figures["followups"]["attainable_local_share"] == 2 / 3
