"""The canary judge on 600 logged queries with audits (evals/results/rollout_replay.json, answers as
served by the untuned base model and the shipped adapter): a worse version is rolled back soon, a
better one promoted, and versions as good as the serving one are not rolled back."""

from __future__ import annotations

from typing import Any

import pytest

from evals.rollout_eval import load_table, replay
from router.config import CanaryConfig


@pytest.fixture(scope="module")
def table() -> dict[str, Any]:
    return load_table()


def test_the_replay_is_real_logged_traffic(table: dict[str, Any]) -> None:
    assert len(table["queries"]) >= 500 and len(set(table["queries"])) == len(table["queries"])
    base, shipped = table["versions"]["base"], table["versions"]["shipped"]
    assert len(base["similarity"]) == len(shipped["similarity"]) == len(table["queries"])
    assert base["degenerate_rate"] > shipped["degenerate_rate"]


def test_a_worse_canary_is_rolled_back_before_it_serves_200_requests(table: dict[str, Any]) -> None:
    for seed in range(5):
        result = replay(table, serving="shipped", canary="base", share=0.25, audit_rate=0.25, seed=seed)
        assert result["action"] == "rollback", result
        assert result["canary_served"] <= 200


def test_a_better_canary_is_promoted(table: dict[str, Any]) -> None:
    for seed in range(5):
        result = replay(table, serving="base", canary="shipped", share=0.25, audit_rate=0.25, seed=seed)
        assert result["action"] == "promote", result


def test_good_canaries_are_rarely_rolled_back(table: dict[str, Any]) -> None:
    config = CanaryConfig()
    better = [replay(table, serving="base", canary="shipped", share=0.25, audit_rate=0.25, seed=s)["action"] for s in range(20)]
    equal = [replay(table, serving="shipped", canary="shipped", share=0.25, audit_rate=0.25, seed=s)["action"] for s in range(20)]
    assert better.count("rollback") / 20 <= config.alpha
    assert equal.count("rollback") / 20 <= config.alpha
