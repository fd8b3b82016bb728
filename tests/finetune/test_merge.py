"""Merged models: base + adapter folded into an F16 GGUF that llama.cpp loads and re-quantizes."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from finetune.merge import merge_adapter, quantize_gguf
from router.backends.llama_cpp import packaged_model_path
from router.chat_template import render_prompt

pytestmark = pytest.mark.slow

PROMPTS = ["where is my order?", "I need to change my shipping address"]


def _last_logits(model: Path, adapter: Path | None, prompt: str) -> np.ndarray:
    from llama_cpp import Llama

    llm = Llama(model_path=str(model), lora_path=str(adapter) if adapter else None, n_ctx=256, n_threads=2, logits_all=True, verbose=False)
    try:
        tokens = llm.tokenize(render_prompt([{"role": "user", "content": prompt}]).encode(), add_bos=True, special=True)
        llm.eval(tokens)
        return np.array(llm.scores[len(tokens) - 1], dtype=np.float64)
    finally:
        llm.close()


@pytest.fixture(scope="module")
def merged(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    from tests.finetune.conftest import write_tiny_adapter

    workdir = tmp_path_factory.mktemp("merge")
    adapter = write_tiny_adapter(workdir / "adapter.gguf", seed=3)
    return adapter, merge_adapter(packaged_model_path(), adapter, workdir / "merged-f16.gguf")


def test_merged_f16_answers_like_base_plus_adapter(merged: tuple[Path, Path]) -> None:
    adapter, f16 = merged
    for prompt in PROMPTS:
        with_adapter = _last_logits(packaged_model_path(), adapter, prompt)
        folded = _last_logits(f16, None, prompt)
        without = _last_logits(packaged_model_path(), None, prompt)
        assert np.corrcoef(with_adapter, folded)[0, 1] > 0.99
        # F16 rounding of the folded weights may swap near-ties, so ask for the top token among the top five.
        assert int(with_adapter.argmax()) in set(np.argsort(-folded)[:5].tolist())
        # The adapter really moved the logits, so the agreement above is not the base agreeing with itself.
        assert np.abs(with_adapter - without).max() > np.abs(with_adapter - folded).max()


def test_requantized_merge_loads_and_is_smaller(merged: tuple[Path, Path], tmp_path: Path) -> None:
    _, f16 = merged
    q8 = quantize_gguf(f16, tmp_path / "merged-q8_0.gguf", "Q8_0")
    assert q8.stat().st_size < 0.6 * f16.stat().st_size
    assert np.corrcoef(_last_logits(f16, None, PROMPTS[0]), _last_logits(q8, None, PROMPTS[0]))[0, 1] > 0.99
