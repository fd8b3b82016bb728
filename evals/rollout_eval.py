"""Canary rollout on replayed traffic: is a worse version rolled back soon, a better one promoted,
and an equal one left alone? Writes ``evals/results/rollout.json`` (``make bench-rollout``).

The replay is the logged traffic of :mod:`evals.rollout_scores`: 600 Bitext queries of the demo's
replay pool, each answered as served by the untuned base model and by the shipped adapter, with
the guard's verdict and the similarity to the cloud's (reference) answer. A replay walks the
queries once in a shuffled order, as requests arriving; each goes to the arm
:func:`router.canary.canary_arm` picks for its conversation under a fresh canary (its own salt),
is answered by that arm's version (its recorded answer), observed by the guard, and audited with
the canary's audit rate; :class:`router.canary.CanaryJudge`, the router's own, decides. Nothing is
decided here: the replay only feeds the judge what a router would have seen.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import time
from pathlib import Path
from typing import Any

from evals.rollout_scores import REPLAY_TABLE
from router.canary import CanaryJudge, CanarySpec, canary_arm, conversation_key
from router.config import CanaryConfig

RESULTS = Path(__file__).resolve().parent / "results" / "rollout.json"


def load_table(path: Path = REPLAY_TABLE) -> dict[str, Any]:
    from evals.demo import load_bitext

    table = json.loads(path.read_text(encoding="utf-8"))
    rows = load_bitext()
    table["queries"] = [rows[i]["instruction"] for i in table["rows"]]  # the texts, read from ../shared
    return table


def replay(
    table: dict[str, Any],
    *,
    serving: str,
    canary: str,
    share: float,
    audit_rate: float,
    seed: int,
    config: CanaryConfig | None = None,
) -> dict[str, Any]:
    """One canary of ``canary`` beside ``serving`` over the logged queries in a ``seed``-shuffled order."""
    config = config or CanaryConfig(audit_rate=audit_rate)
    spec = CanarySpec(f"{canary}-canary", f"{serving}-serving", share, f"replay-{seed}")
    judge = CanaryJudge(spec, config)
    rng = random.Random(seed)
    order = list(range(len(table["queries"])))
    rng.shuffle(order)
    versions = {"canary": table["versions"][canary], "serving": table["versions"][serving]}
    requests = 0
    for i in order:
        requests += 1
        arm = canary_arm(conversation_key([{"role": "user", "content": table["queries"][i]}]), spec)
        scores = versions[arm]
        degenerate = bool(scores["degenerate"][i])
        judge.observe_answer(arm, degenerate)
        if rng.random() < audit_rate:
            judge.observe_audit(arm, float(scores["similarity"][i]), degenerate)
        verdict = judge.decide()
        if verdict is not None:
            return {
                "action": verdict.action, "reason": verdict.reason, "requests": requests,
                "canary_served": judge.arms["canary"].served, "evidence": verdict.evidence,
            }  # fmt: skip
    return {"action": None, "reason": "undecided at the end of the replay", "requests": requests,
            "canary_served": judge.arms["canary"].served, "evidence": judge.evidence()}  # fmt: skip


def outcomes(table: dict[str, Any], *, serving: str, canary: str, share: float, audit_rate: float, seeds: range) -> dict[str, Any]:
    runs = [replay(table, serving=serving, canary=canary, share=share, audit_rate=audit_rate, seed=s) for s in seeds]
    actions = [r["action"] for r in runs]
    decided = [r["requests"] for r in runs if r["action"] is not None]
    return {
        "replays": len(runs),
        "promoted": actions.count("promote"), "rolled_back": actions.count("rollback"), "undecided": actions.count(None),
        "median_requests_to_decision": statistics.median(decided) if decided else None,
        "max_canary_served": max(r["canary_served"] for r in runs),
        "first": runs[0],
    }  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--share", type=float, default=0.25)
    parser.add_argument("--audit-rate", type=float, default=CanaryConfig().audit_rate)
    parser.add_argument("--replays", type=int, default=20)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    started = time.perf_counter()
    table = load_table()
    seeds = range(args.replays)
    common = {"share": args.share, "audit_rate": args.audit_rate, "seeds": seeds}
    bad = outcomes(table, serving="shipped", canary="base", **common)
    good = outcomes(table, serving="base", canary="shipped", **common)
    same = outcomes(table, serving="shipped", canary="shipped", **common)
    versions = table["versions"]
    result = {
        "queries": len(table["queries"]),
        "share": args.share,
        "audit_rate": args.audit_rate,
        "config": CanaryConfig(audit_rate=args.audit_rate).model_dump(),
        "versions": {v: {"mean_similarity": versions[v]["mean_similarity"], "degenerate_rate": versions[v]["degenerate_rate"]} for v in versions},
        "bad_candidate_rolled_back": bad["rolled_back"] == bad["replays"],
        "bad_candidate_requests_served": bad["max_canary_served"],
        "good_candidate_promoted": good["promoted"] == good["replays"],
        "false_rollback_rate": max(good["rolled_back"], same["rolled_back"]) / args.replays,
        "bad_candidate": bad,
        "good_candidate": good,
        "equal_candidate": same,
        "seconds": round(time.perf_counter() - started, 1),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    for name, o in (("worse (base beside the shipped adapter)", bad), ("better (shipped adapter beside base)", good), ("equal (shipped beside shipped)", same)):
        print(f"{name}: {o['promoted']} promoted, {o['rolled_back']} rolled back, {o['undecided']} undecided of {o['replays']}; "
              f"median {o['median_requests_to_decision']} requests to a decision; at most {o['max_canary_served']} served by the canary")  # fmt: skip
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
