"""Fixtures for finetune tests: tiny but real GGUF LoRA adapters for the packaged Gemma 3 270M."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

# Gemma 3 270M: hidden size 640, q projection 1024 wide, v projection 256 wide, 18 blocks.
_SHAPES = {"attn_q": (640, 1024), "attn_v": (640, 256)}
_LAYERS = 18


def write_tiny_adapter(path: Path, *, seed: int = 0, rank: int = 4, scale: float = 0.1) -> Path:
    """A random rank-``rank`` LoRA on every block's q and v projections; nonzero ``lora_b`` so outputs change."""
    from finetune.export import write_lora_gguf

    rng = np.random.default_rng(seed)
    tensors: dict[str, np.ndarray] = {}
    for layer in range(_LAYERS):
        for module, (n_in, n_out) in _SHAPES.items():
            tensors[f"blk.{layer}.{module}.weight.lora_a"] = rng.normal(0, scale, (rank, n_in)).astype(np.float32)
            tensors[f"blk.{layer}.{module}.weight.lora_b"] = rng.normal(0, scale, (n_out, rank)).astype(np.float32)
    return write_lora_gguf(tensors, path, alpha=float(rank))


@pytest.fixture
def make_adapter(tmp_path: Path) -> Callable[..., Path]:
    counter = iter(range(1_000_000))

    def build(seed: int = 0, **kwargs: float) -> Path:
        return write_tiny_adapter(tmp_path / f"adapter-{next(counter)}.gguf", seed=seed, **kwargs)

    return build


def write_classifier_variant(source: Path, path: Path, *, prefix: str = "", threshold: float = 0.0) -> Path:
    """A real classifier artifact derived from ``source`` without refitting: classes renamed ``prefix + class``.

    The renamed classes make an answer tell which version classified it; threshold 0 gives every
    query a category, so no request needs the cloud.
    """
    from classifiers import EmbeddingClassifier

    classifier = EmbeddingClassifier.load(source)
    classifier.classes_ = np.array([prefix + str(c) for c in classifier.classes_], dtype=object)
    classifier.threshold_ = threshold
    return classifier.save(path)
