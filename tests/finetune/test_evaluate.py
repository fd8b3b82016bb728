"""Evaluation generates exactly as the router serves: same settings, same guarded loop, same text."""

from __future__ import annotations

from pathlib import Path

import pytest

from finetune.datasets import Example
from finetune.evaluate import EvalConfig, evaluate_model
from tests.conftest import bitext_rows, user


def test_removed_generation_keys_point_to_the_router_config() -> None:
    with pytest.raises(ValueError, match="local.n_ctx"):
        EvalConfig.model_validate({"n_ctx": 1024})
    assert EvalConfig(n_threads=2).n_threads == 2


@pytest.mark.slow
def test_evaluation_answers_are_the_served_answers(tmp_path: Path) -> None:
    from router import Client, RouterConfig

    rows = [r for r in bitext_rows() if r["category"] in {"ORDER", "SHIPPING"}][:6]
    local = {"n_threads": 1, "default_max_tokens": 100, "registry_path": None}
    config = RouterConfig(local=local, cloud={"preimport": False}, log={"path": tmp_path / "log.db"}, warmup="lazy")
    with Client(config) as client:  # model="local": no fallback, the guard's cut is what is served
        served = [client.chat.completions.create(model="local", messages=user(r["instruction"])) for r in rows]
    examples = [Example(tuple(user(r["instruction"])), r["response"], r["category"], f"row-{i}") for i, r in enumerate(rows)]
    report = evaluate_model(examples, serving=config.local, config=EvalConfig(n_threads=1), progress=False)

    assert [a.answer for a in report.answers] == [r.choices[0].message.content for r in served]
    assert [a.degenerate for a in report.answers] == [r.router.degenerate for r in served]
    assert [a.completion_tokens for a in report.answers] == [r.usage.completion_tokens for r in served]
    # The untuned base model echoes and loops: the comparison covers answers the guard cut short.
    assert any(a.degenerate for a in report.answers)
