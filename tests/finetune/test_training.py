"""A tiny real LoRA run on the packaged model: it changes the served output, exports to a GGUF
adapter that llama.cpp runs with the same greedy tokens as transformers + peft, and resumes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from finetune.datasets import Example
from finetune.export import export_adapter
from finetune.training import IGNORE, TrainConfig, TrainResult, encode_example, load_base_model, train_lora
from router.chat_template import STOP_SEQUENCES, render_prompt
from router.errors import ArtifactError

pytestmark = pytest.mark.slow

ANSWER = "Thank you for reaching out. Your order is on its way and will arrive within three business days."
PROMPTS = ["where is my order?", "I want to track my package", "how do I change my delivery address?"]
# High learning rate and few steps: enough to move greedy outputs, fast enough for CI.
TINY = TrainConfig(epochs=3, max_steps=6, batch_size=2, learning_rate=3e-3, validation_examples=0, eval_every_steps=3, lora_r=8, lora_alpha=16)


def _examples() -> list[Example]:
    questions = ["where is my order", "track my order please", "when will my order arrive", "status of my order",
                 "has my order shipped", "order not arrived yet", "where is my parcel", "is my order on its way"]  # fmt: skip
    return [Example(messages=({"role": "user", "content": q},), answer=ANSWER, category="ORDER", source=f"test:{i}") for i, q in enumerate(questions)]


@pytest.fixture(scope="session")
def base() -> Any:
    return load_base_model()


@pytest.fixture(scope="session")
def trained(base: Any, tmp_path_factory: pytest.TempPathFactory) -> tuple[TrainResult, Path]:
    out = tmp_path_factory.mktemp("lora")
    result = train_lora(_examples(), out, TINY, base=base, progress=False)
    return result, export_adapter(result.adapter_dir, out / "adapter.gguf")


def _llama_greedy(adapter: Path | None, prompt: str, n: int = 12) -> list[int]:
    from llama_cpp import Llama

    from router.backends.llama_cpp import packaged_model_path

    llm = Llama(model_path=str(packaged_model_path()), lora_path=str(adapter) if adapter else None, n_ctx=512, n_threads=2, verbose=False)
    try:
        tokens = llm.tokenize(render_prompt([{"role": "user", "content": prompt}]).encode(), add_bos=True, special=True)
        out = llm.create_completion(tokens, max_tokens=n, temperature=0.0, stop=list(STOP_SEQUENCES))
        text = out["choices"][0]["text"]
        return llm.tokenize(text.encode(), add_bos=False, special=True)
    finally:
        llm.close()


def _hf_greedy(base: Any, adapter_dir: Path, prompt: str, n: int = 12) -> list[int]:
    import torch
    from peft import PeftModel

    model = PeftModel.from_pretrained(base.model, adapter_dir)
    try:
        model.eval()
        ids = base.tokenizer(render_prompt([{"role": "user", "content": prompt}]), return_tensors="pt", add_special_tokens=True).input_ids
        generated: list[int] = []
        with torch.no_grad():
            for _ in range(n):
                logits = model(input_ids=ids).logits[0, -1]
                token = int(logits.argmax())
                generated.append(token)
                if base.tokenizer.decode([token]) in STOP_SEQUENCES:
                    break
                ids = torch.cat([ids, torch.tensor([[token]])], dim=1)
    finally:
        model.unload()
    text = base.tokenizer.decode(generated)
    for stop in STOP_SEQUENCES:
        text = text.split(stop)[0]
    return base.tokenizer(text, add_special_tokens=False).input_ids


def test_a_follow_up_trains_on_the_prompt_the_router_serves(base: Any) -> None:
    from router.backends import LlamaCppBackend
    from router.config import LocalConfig

    conversation = (
        {"role": "system", "content": "You are the support assistant of an online shop."},
        {"role": "user", "content": "where is my order?"},
        {"role": "assistant", "content": "It left our warehouse this morning and arrives on Thursday."},
        {"role": "user", "content": "ok, can you send it to my office instead?"},
    )
    backend = LlamaCppBackend(LocalConfig(n_threads=1, registry_path=None))
    try:
        served = backend._prompt_tokens(list(conversation))  # the tokens llama.cpp decodes for this request
    finally:
        backend.close()
    ids, labels = encode_example(base.tokenizer, Example(conversation, ANSWER, "ORDER"), TrainConfig(max_prompt_tokens=len(served)))
    assert ids[: len(served)] == served  # the whole history, rendered and tokenized as served
    assert labels[: len(served)] == [IGNORE] * len(served) and labels[len(served) :] == ids[len(served) :]


def test_training_reduces_loss_and_reports_throughput(trained: tuple[TrainResult, Path]) -> None:
    result, _ = trained
    losses = [h["loss"] for h in result.history]
    assert result.steps == TINY.max_steps
    assert losses[-1] < losses[0] * 0.7, losses
    assert result.train_tokens > 0 and result.tokens_per_s > 0


def test_tiny_run_changes_the_served_output(trained: tuple[TrainResult, Path]) -> None:
    _, adapter = trained
    before = [_llama_greedy(None, p) for p in PROMPTS]
    after = [_llama_greedy(adapter, p) for p in PROMPTS]
    assert before != after


def test_gguf_adapter_matches_transformers_peft_greedy_tokens(base: Any, trained: tuple[TrainResult, Path]) -> None:
    from llama_cpp import Llama

    from router.backends.llama_cpp import packaged_model_path

    result, adapter = trained
    vocab = Llama(model_path=str(packaged_model_path()), vocab_only=True, verbose=False)
    try:
        for prompt in PROMPTS:
            llama_text = vocab.detokenize(_llama_greedy(adapter, prompt)).decode()
            hf_text = base.tokenizer.decode(_hf_greedy(base, result.adapter_dir, prompt))
            assert llama_text.strip() == hf_text.strip(), prompt
    finally:
        vocab.close()


def test_an_interrupted_run_resumes_from_its_last_checkpoint(base: Any, tmp_path: Path) -> None:
    config = TINY.model_copy(update={"max_steps": 4, "eval_every_steps": 1})

    def interrupt(record: dict[str, float]) -> None:
        if record["step"] == 2:
            raise KeyboardInterrupt  # what a cron timeout or Ctrl-C does mid-run

    with pytest.raises(KeyboardInterrupt):
        train_lora(_examples(), tmp_path, config, base=base, progress=False, on_step=interrupt)
    resumed = train_lora(_examples(), tmp_path, config, base=base, progress=False)
    assert resumed.resumed_from_step is not None and resumed.resumed_from_step >= 1
    assert resumed.steps == 4
    assert [h["step"] for h in resumed.history] == [1, 2, 3, 4]


def test_export_refuses_what_llama_cpp_cannot_represent(trained: tuple[TrainResult, Path], tmp_path: Path) -> None:
    result, _ = trained
    copy = tmp_path / "dora"
    copy.mkdir()
    for f in result.adapter_dir.iterdir():
        (copy / f.name).write_bytes(f.read_bytes())
    settings = json.loads((copy / "adapter_config.json").read_text())
    (copy / "adapter_config.json").write_text(json.dumps({**settings, "use_dora": True}))
    with pytest.raises(ArtifactError, match="plain LoRA"):
        export_adapter(copy, tmp_path / "x.gguf")
