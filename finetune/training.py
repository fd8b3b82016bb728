"""LoRA fine-tuning of the local model with transformers + peft, on the base GGUF's own weights.

transformers dequantizes the served GGUF (so training starts from the weights llama.cpp runs),
peft adds LoRA, and only the adapter is kept: a model loaded from GGUF cannot be saved whole.
Prompts are rendered with :mod:`hybrid_common.chat`, exactly as the router serves them, and
the loss covers assistant tokens only.

CPU cost is dominated by the 262k-token output layer, so by default output logits are computed
only at positions whose next token is an answer token (``response_only_logits``); the naive path
(full-sequence logits, masked loss) is kept for comparison and measured by
:func:`measure_logits_speedup`. Checkpoints (adapter, optimizer, scheduler, RNG, step) are written
atomically and a rerun with the same data and settings resumes from the newest one.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from hybrid_common.chat import END_OF_TURN, render_prompt
from hybrid_common.errors import ArtifactError, MissingDependencyError
from hybrid_common.pruning import prune_to_fit

if TYPE_CHECKING:
    from finetune.datasets import Example

__all__ = ["BaseModelBundle", "TrainConfig", "TrainResult", "load_base_model", "measure_logits_speedup", "train_lora"]

IGNORE = -100


class TrainConfig(BaseModel):
    """LoRA training settings; the defaults fit a 2-core CPU and 1,000 short support answers."""

    model_config = ConfigDict(extra="forbid")

    lora_r: int = Field(16, ge=1, description="LoRA rank.")
    lora_alpha: float = Field(32.0, gt=0, description="LoRA alpha; llama.cpp scales by alpha / r as peft does.")
    lora_dropout: float = Field(0.0, ge=0, lt=1, description="Dropout on the LoRA input.")
    target_modules: list[str] = Field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        description="Projections that get LoRA (all map to llama.cpp adapter tensors).",
    )
    learning_rate: float = Field(3e-4, gt=0, description="Peak AdamW learning rate.")
    weight_decay: float = Field(0.0, ge=0)
    warmup_fraction: float = Field(0.05, ge=0, lt=1, description="Share of steps spent warming up linearly.")
    epochs: float = Field(1.0, gt=0, description="Passes over the training set (fractions allowed).")
    max_steps: int | None = Field(None, ge=1, description="Stop after this many optimizer steps whatever the epochs.")
    batch_size: int = Field(4, ge=1, description="Examples per optimizer step (length-grouped to limit padding).")
    max_prompt_tokens: int = Field(256, ge=8, description="Prompts longer than this keep their last tokens.")
    max_answer_tokens: int = Field(256, ge=8, description="Answers longer than this are cut (and lose their end-of-turn).")
    validation_examples: int = Field(32, ge=0, description="Training examples held back for validation loss (0: none).")
    eval_every_steps: int = Field(50, ge=1, description="Validation loss and checkpoint cadence.")
    early_stopping_patience: int = Field(2, ge=1, description="Stop after this many validations without improvement.")
    response_only_logits: bool = Field(True, description="Compute output logits only where the loss needs them.")
    end_of_turn_weight: float = Field(
        5.0,
        ge=1.0,
        description="Loss weight of the end-of-turn token. It is one token in ~170 of a support answer; unweighted, "
        "a short run teaches the content but not where to stop, and the served model rambles to max_tokens.",
    )
    category_weights: dict[str, Annotated[float, Field(ge=0)]] = Field(
        default_factory=dict,
        description="Passes per epoch over one category's examples (default 1): 2.0 trains each twice, 1.5 repeats a "
        "reproducible half. Focuses a retrain on categories the quality gate keeps closed without training the "
        "open ones longer; validation examples are never repeated.",
    )
    seed: int = Field(0, description="Seeds data order, LoRA initialisation and dropout.")
    threads: int | None = Field(None, ge=1, description="torch CPU threads; default: all cores.")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="'auto' uses a GPU (bf16) when there is one.")

    def fingerprint(self) -> str:
        """Settings that change the result (not threads or device), for checkpoint compatibility."""
        fields = self.model_dump(exclude={"threads", "device"})
        if not fields["category_weights"]:  # unset: fingerprints of runs from before the setting stay valid
            del fields["category_weights"]
        return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:16]


@dataclass
class BaseModelBundle:
    """The dequantized base model and its tokenizer, loaded once (about 80 s on 2 cores)."""

    model: Any
    tokenizer: Any
    gguf_path: Path


@dataclass
class TrainResult:
    adapter_dir: Path
    steps: int
    examples: int
    epochs: float
    train_tokens: int
    answer_tokens: int
    seconds: float
    tokens_per_s: float
    best_validation_loss: float | None
    stopped_early: bool
    resumed_from_step: int | None
    history: list[dict[str, float]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {k: (str(v) if isinstance(v, Path) else v) for k, v in self.__dict__.items()}


def _torch() -> Any:
    try:
        import torch
    except ImportError as err:
        raise MissingDependencyError("torch", purpose="fine-tuning", extra="train") from err
    return torch


def load_base_model(gguf_path: str | Path | None = None, *, device: str = "auto") -> BaseModelBundle:
    """Load the base GGUF with transformers (dequantized to fp32, bf16 on a GPU) and its tokenizer."""
    torch = _torch()
    try:
        from transformers import AutoModelForCausalLM, AutoTokenizer
    except ImportError as err:
        raise MissingDependencyError("transformers", purpose="fine-tuning", extra="train") from err
    if gguf_path is None:
        from router.backends import packaged_model_path

        gguf_path = packaged_model_path()
    gguf_path = Path(gguf_path)
    if not gguf_path.is_file():
        raise ArtifactError(f"no base model at {gguf_path}")
    use_cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    model = AutoModelForCausalLM.from_pretrained(
        gguf_path.parent, gguf_file=gguf_path.name, dtype=torch.bfloat16 if use_cuda else torch.float32
    )
    if use_cuda:
        model = model.to("cuda")
    return BaseModelBundle(model=model, tokenizer=tokenizer, gguf_path=gguf_path)


def encode_example(tokenizer: Any, example: Example, config: TrainConfig) -> tuple[list[int], list[int]]:
    """Token ids and labels (``-100`` outside the answer) with the serving template.

    A conversation longer than ``max_prompt_tokens`` is pruned as the router prunes one for a
    window it overflows (:func:`hybrid_common.pruning.prune_to_fit`: system prompt and the most
    recent whole turns), so the model learns from prompts shaped like the ones it is served; only
    a single turn too long on its own is cut from the left.
    """

    def prompt_ids_of(messages: Sequence[Mapping[str, Any]]) -> list[int]:
        return list(tokenizer(render_prompt(list(messages)), add_special_tokens=True).input_ids)

    prompt_ids = prompt_ids_of(example.messages)
    if len(prompt_ids) > config.max_prompt_tokens:
        pruned = prune_to_fit(example.messages, lambda m: len(prompt_ids_of(m)) <= config.max_prompt_tokens)
        if pruned is not None:
            prompt_ids = prompt_ids_of(pruned.messages)
    prompt_ids = prompt_ids[-config.max_prompt_tokens :]
    # The end-of-turn marker is learnt too: it is how the served model knows to stop.
    answer_ids = tokenizer(example.answer.strip() + END_OF_TURN, add_special_tokens=False).input_ids
    answer_ids = answer_ids[: config.max_answer_tokens]
    return prompt_ids + answer_ids, [IGNORE] * len(prompt_ids) + answer_ids


def end_of_turn_id(tokenizer: Any) -> int:
    """Token id of the end-of-turn marker, which must be a single (special) token."""
    ids = tokenizer(END_OF_TURN, add_special_tokens=False).input_ids
    if len(ids) != 1:
        raise ArtifactError(f"the tokenizer splits {END_OF_TURN!r} into {len(ids)} tokens; the chat template needs it whole")
    return int(ids[0])


def _batches(encoded: Sequence[tuple[list[int], list[int]]], batch_size: int, rng: random.Random) -> list[list[int]]:
    """Shuffled batches of similar length: padding is pure waste on a CPU."""
    order = list(range(len(encoded)))
    rng.shuffle(order)
    window = batch_size * 16
    batches: list[list[int]] = []
    for start in range(0, len(order), window):
        chunk = sorted(order[start : start + window], key=lambda i: len(encoded[i][0]))
        batches.extend(chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size))
    rng.shuffle(batches)
    return batches


def _collate(torch: Any, items: Sequence[tuple[list[int], list[int]]], pad_id: int, device: Any) -> tuple[Any, Any, Any]:
    width = max(len(ids) for ids, _ in items)
    ids = [x + [pad_id] * (width - len(x)) for x, _ in items]
    labels = [y + [IGNORE] * (width - len(y)) for _, y in items]
    mask = [[1] * len(x) + [0] * (width - len(x)) for x, _ in items]
    as_tensor = lambda rows: torch.tensor(rows, dtype=torch.long, device=device)  # noqa: E731
    return as_tensor(ids), as_tensor(mask), as_tensor(labels)


def _causal_lm(model: Any) -> Any:
    """The ``*ForCausalLM`` inside a peft wrapper (or the model itself)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def batch_loss(model: Any, input_ids: Any, attention_mask: Any, labels: Any, *, response_only: bool, eot_id: int | None = None, eot_weight: float = 1.0) -> Any:
    """Weighted mean cross-entropy over answer tokens (the end-of-turn token weighs ``eot_weight``).

    ``response_only`` projects to the vocabulary only the positions whose next token is an
    answer token; the naive path projects every position, as ``model(labels=...)`` does."""
    torch = _torch()
    causal_lm = _causal_lm(model)
    hidden = causal_lm.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
    targets = labels[:, 1:]
    wanted = targets != IGNORE
    if response_only:
        logits = causal_lm.lm_head(hidden[:, :-1][wanted])
    else:
        logits = causal_lm.lm_head(hidden)[:, :-1][wanted]
    cap = getattr(causal_lm.config, "final_logit_softcapping", None)
    if cap:
        logits = torch.tanh(logits / cap) * cap
    chosen = targets[wanted]
    losses = torch.nn.functional.cross_entropy(logits.float(), chosen, reduction="none")
    weights = torch.ones_like(losses)
    if eot_id is not None and eot_weight != 1.0:
        weights = torch.where(chosen == eot_id, torch.full_like(losses, eot_weight), weights)
    return (losses * weights).sum() / weights.sum()


def _set_threads(torch: Any, threads: int | None) -> None:
    torch.set_num_threads(threads or os.cpu_count() or 1)


def _rng_state(torch: Any) -> dict[str, Any]:
    return {"python": random.getstate(), "torch": torch.get_rng_state()}


def _save_checkpoint(torch: Any, directory: Path, step: int, model: Any, optimizer: Any, scheduler: Any, state: dict[str, Any]) -> None:
    """Write ``checkpoint-<step>`` atomically (temporary directory, then rename) and prune older ones."""
    from peft import get_peft_model_state_dict

    final = directory / f"checkpoint-{step:06d}"
    tmp = directory / f".checkpoint-{step:06d}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    torch.save(
        {
            "adapter": get_peft_model_state_dict(model, save_embedding_layers=False),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "rng": _rng_state(torch),
            **state,
        },
        tmp / "state.pt",
    )
    if final.exists():  # a resumed run reached the same step again
        shutil.rmtree(tmp)
    else:
        os.replace(tmp, final)
    for old in sorted(directory.glob("checkpoint-*"))[:-2]:
        shutil.rmtree(old, ignore_errors=True)


def _latest_checkpoint(directory: Path) -> Path | None:
    found = sorted(directory.glob("checkpoint-*"))
    return found[-1] if found else None


def _validation_loss(torch: Any, model: Any, batches: Sequence[tuple[Any, Any, Any]], response_only: bool, eot_id: int | None) -> float:
    model.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for input_ids, mask, labels in batches:
            n = int((labels[:, 1:] != IGNORE).sum())
            # Unweighted: validation loss stays comparable across end_of_turn_weight settings.
            total += float(batch_loss(model, input_ids, mask, labels, response_only=response_only, eot_id=eot_id)) * n
            count += n
    model.train()
    return total / max(count, 1)


def train_lora(
    examples: Sequence[Example],
    output_dir: str | Path,
    config: TrainConfig | None = None,
    *,
    base: BaseModelBundle | None = None,
    progress: bool = True,
    on_step: Callable[[dict[str, float]], None] | None = None,
) -> TrainResult:
    """Fine-tune a LoRA adapter on ``examples``; the best adapter (by validation loss) ends in
    ``output_dir/adapter`` (peft format, see :func:`finetune.export.export_adapter` for GGUF)."""
    torch = _torch()
    config = config or TrainConfig()
    if not examples:
        raise ValueError("no training examples")
    output_dir = Path(output_dir)
    checkpoints = output_dir / "checkpoints"
    checkpoints.mkdir(parents=True, exist_ok=True)
    _set_threads(torch, config.threads)
    random.seed(config.seed)
    torch.manual_seed(config.seed)

    base = base or load_base_model(device=config.device)
    device = next(base.model.parameters()).device
    model = _with_lora(base, config)
    try:
        return _train(torch, model, base, examples, output_dir, checkpoints, config, device, progress, on_step)
    finally:
        # Leave the shared base model as it was, so it can be wrapped again (tests, evaluation).
        model.unload()


def _oversampled(indices: list[int], categories: Sequence[str | None], config: TrainConfig) -> list[int]:
    """``indices`` with each example repeated by its category's weight (after the validation split,
    so no validation example is ever trained on); fractional parts pick a seeded share."""
    weights = config.category_weights
    if not weights:
        return indices
    unknown = sorted(set(weights) - set(categories))
    if unknown:
        raise ValueError(f"category_weights names categories with no training examples: {', '.join(unknown)}")
    rng = random.Random(config.seed + 1)
    out: list[int] = []
    for i in indices:
        weight = weights.get(categories[i] or "", 1.0)
        repeats = int(weight) + (1 if rng.random() < weight - int(weight) else 0)
        out.extend([i] * repeats)
    return out


def _with_lora(base: BaseModelBundle, config: TrainConfig) -> Any:
    """Wrap the shared base model with fresh LoRA layers (undo with ``.unload()``)."""
    from peft import LoraConfig, get_peft_model

    lora = LoraConfig(
        r=config.lora_r,
        lora_alpha=config.lora_alpha,
        lora_dropout=config.lora_dropout,
        target_modules=list(config.target_modules),
        task_type="CAUSAL_LM",
    )
    return get_peft_model(base.model, lora)


def _train(torch, model, base, examples, output_dir, checkpoints, config, device, progress, on_step):  # noqa: ANN001, PLR0913, PLR0915
    from peft import set_peft_model_state_dict
    from tqdm.auto import tqdm

    pad_id = base.tokenizer.pad_token_id if base.tokenizer.pad_token_id is not None else 0
    eot_id = end_of_turn_id(base.tokenizer)
    encoded = [encode_example(base.tokenizer, example, config) for example in examples]
    data_fingerprint = hashlib.sha256(json.dumps([e[0] for e in encoded]).encode()).hexdigest()[:16]
    n_val = min(config.validation_examples, len(encoded) // 5)
    order = list(range(len(encoded)))
    random.Random(config.seed).shuffle(order)
    validation = [encoded[i] for i in order[:n_val]]
    training = [encoded[i] for i in _oversampled(order[n_val:], [e.category for e in examples], config)]
    val_batches = [_collate(torch, validation[i : i + config.batch_size], pad_id, device) for i in range(0, n_val, config.batch_size)]

    rng = random.Random(config.seed)
    epoch_plan: list[list[int]] = []
    for _ in range(math.ceil(config.epochs)):
        epoch_plan.extend(_batches(training, config.batch_size, rng))
    total_steps = min(len(epoch_plan), max(1, round(len(training) / config.batch_size * config.epochs)))
    if config.max_steps:
        total_steps = min(total_steps, config.max_steps)

    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=config.learning_rate, weight_decay=config.weight_decay)
    warmup = max(1, int(total_steps * config.warmup_fraction))
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1.0, (s + 1) / warmup) * max(0.1, 1 - max(0, s - warmup) / max(1, total_steps - warmup))
    )
    state: dict[str, Any] = {"step": 0, "best": None, "bad_validations": 0, "train_tokens": 0, "answer_tokens": 0, "seconds": 0.0, "history": []}
    identity = {"config": config.fingerprint(), "data": data_fingerprint}
    resumed_from = None
    latest = _latest_checkpoint(checkpoints)
    if latest is not None:
        saved = torch.load(latest / "state.pt", weights_only=False)
        if saved.get("identity") == identity:
            set_peft_model_state_dict(model, saved["adapter"])
            optimizer.load_state_dict(saved["optimizer"])
            scheduler.load_state_dict(saved["scheduler"])
            random.setstate(saved["rng"]["python"])
            torch.set_rng_state(saved["rng"]["torch"])
            state.update({k: saved[k] for k in state})
            resumed_from = state["step"]
    best_dir = output_dir / "adapter"

    def save_best() -> None:
        tmp = output_dir / ".adapter.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        # No embedding layers are trained; "auto" would probe the Hub for the base config (offline: a warning).
        model.save_pretrained(tmp, save_embedding_layers=False)
        shutil.rmtree(best_dir, ignore_errors=True)
        os.replace(tmp, best_dir)

    model.train()
    stopped_early = False
    bar = tqdm(total=total_steps, initial=state["step"], desc="LoRA training", unit="step", disable=not progress)
    started = time.perf_counter() - state["seconds"]
    while state["step"] < total_steps:
        batch = [training[i] for i in epoch_plan[state["step"]]]
        input_ids, mask, labels = _collate(torch, batch, pad_id, device)
        loss = batch_loss(
            model, input_ids, mask, labels, response_only=config.response_only_logits, eot_id=eot_id, eot_weight=config.end_of_turn_weight
        )
        loss.backward()
        torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        state["step"] += 1
        state["train_tokens"] += int(mask.sum())
        state["answer_tokens"] += int((labels[:, 1:] != IGNORE).sum())
        state["seconds"] = time.perf_counter() - started
        record = {"step": state["step"], "loss": loss.item(), "lr": scheduler.get_last_lr()[0]}
        bar.set_postfix(loss=f"{record['loss']:.3f}", tok_s=f"{state['train_tokens'] / state['seconds']:.0f}")
        bar.update(1)
        at_checkpoint = state["step"] % config.eval_every_steps == 0 or state["step"] == total_steps
        if at_checkpoint:
            if val_batches:
                record["validation_loss"] = _validation_loss(torch, model, val_batches, config.response_only_logits, eot_id)
                if state["best"] is None or record["validation_loss"] < state["best"]:
                    state["best"], state["bad_validations"] = record["validation_loss"], 0
                    save_best()
                else:
                    state["bad_validations"] += 1
            else:
                save_best()
        state["history"].append(record)
        if on_step:
            on_step(record)
        if at_checkpoint:
            state["seconds"] = time.perf_counter() - started
            _save_checkpoint(torch, checkpoints, state["step"], model, optimizer, scheduler, {**state, "identity": identity})
            if state["bad_validations"] >= config.early_stopping_patience:
                stopped_early = True
                break
    bar.close()
    if not best_dir.exists():
        save_best()
    examples_seen = min(state["step"] * config.batch_size, len(training) * config.epochs)
    return TrainResult(
        adapter_dir=best_dir,
        steps=state["step"],
        examples=len(training),
        epochs=examples_seen / max(1, len(training)),
        train_tokens=state["train_tokens"],
        answer_tokens=state["answer_tokens"],
        seconds=state["seconds"],
        tokens_per_s=state["train_tokens"] / max(state["seconds"], 1e-9),
        best_validation_loss=state["best"],
        stopped_early=stopped_early,
        resumed_from_step=resumed_from,
        history=state["history"],
    )


def measure_logits_speedup(
    examples: Sequence[Example], config: TrainConfig | None = None, *, base: BaseModelBundle, batches: int = 3
) -> dict[str, float]:
    """Seconds per training step (forward + backward) with full-sequence vs response-only logits,
    on the same batches, side by side; returns both and their ratio."""
    torch = _torch()
    config = config or TrainConfig()
    _set_threads(torch, config.threads)
    model = _with_lora(base, config)
    try:
        device = next(base.model.parameters()).device
        pad_id = base.tokenizer.pad_token_id if base.tokenizer.pad_token_id is not None else 0
        encoded = [encode_example(base.tokenizer, e, config) for e in examples[: batches * config.batch_size]]
        items = [_collate(torch, encoded[i : i + config.batch_size], pad_id, device) for i in range(0, len(encoded), config.batch_size)]
        model.train()
        timings: dict[str, list[float]] = {"naive": [], "response_only": []}
        # Warm-up once, then alternate so drift on a noisy machine hits both paths alike.
        eot_id = end_of_turn_id(base.tokenizer)
        batch_loss(model, *items[0], response_only=True, eot_id=eot_id, eot_weight=config.end_of_turn_weight).backward()
        model.zero_grad(set_to_none=True)
        for item in items:
            for name in ("naive", "response_only"):
                start = time.perf_counter()
                loss = batch_loss(model, *item, response_only=name == "response_only", eot_id=eot_id, eot_weight=config.end_of_turn_weight)
                loss.backward()
                timings[name].append(time.perf_counter() - start)
                model.zero_grad(set_to_none=True)
        naive, fast = sum(timings["naive"]), sum(timings["response_only"])
        return {"naive_s_per_step": naive / len(items), "response_only_s_per_step": fast / len(items), "speedup": naive / fast}
    finally:
        model.unload()
