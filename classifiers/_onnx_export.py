"""Export a sentence-transformers transformer to ONNX, then fuse and optionally quantize it.

Runs at fit time only (needs torch and onnx). torch 2.13 defaults to the dynamo exporter, which
needs onnxscript; the TorchScript exporter (``dynamo=False``) still works and is what we use.
The graph outputs token states; pooling stays in numpy so serving and fitting share one recipe.
Imported only from fitting code, so torch is imported at the top.
"""

from __future__ import annotations

import logging
import tempfile
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

_INPUTS = ["input_ids", "attention_mask", "token_type_ids"]
_SAMPLE = ["a padded example sentence for tracing the mask path", "short"]


class _HiddenStates(torch.nn.Module):
    """Positional-argument wrapper: the exporter traces ``forward(ids, mask, types)``."""

    def __init__(self, transformer: torch.nn.Module) -> None:
        super().__init__()
        self.transformer = transformer

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor
    ) -> torch.Tensor:
        return self.transformer(
            input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
        ).last_hidden_state


def export_transformer(model: SentenceTransformer, *, optimize: bool = True, quantize: bool = False) -> bytes:
    """ONNX bytes of ``model``'s transformer: token ids in, last hidden state out."""
    transformer = model[0].auto_model
    config = transformer.config
    previous_attention = config._attn_implementation
    # onnxruntime's BERT fusion recognises the eager attention pattern, not the SDPA one.
    transformer.set_attn_implementation("eager")
    was_training = transformer.training
    transformer.eval()
    try:
        # Trace with padding so the attention-mask path is part of the graph.
        sample = model.tokenizer(_SAMPLE, padding=True, return_tensors="pt")
        args = tuple(sample[name] for name in _INPUTS)
        axes = {name: {0: "batch", 1: "tokens"} for name in [*_INPUTS, "last_hidden_state"]}
        with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
            # The TorchScript exporter is deprecated but is the one that works without onnxscript;
            # its tracer warnings concern Python-side shape checks that do not affect BERT.
            warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"torch\.onnx.*")
            warnings.filterwarnings("ignore", message=r".*legacy TorchScript-based ONNX export.*")
            warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
            warnings.filterwarnings("ignore", message=r"Exporting aten::index operator.*")
            raw = Path(tmp) / "raw.onnx"
            with torch.no_grad():
                torch.onnx.export(
                    _HiddenStates(transformer),
                    args,
                    str(raw),
                    input_names=_INPUTS,
                    output_names=["last_hidden_state"],
                    dynamic_axes=axes,
                    opset_version=17,
                    dynamo=False,
                )
            current = raw
            if optimize:
                current = _fuse(current, Path(tmp) / "fused.onnx", config.num_attention_heads, config.hidden_size)
            if quantize:
                current = _quantize(current, Path(tmp) / "int8.onnx")
            return current.read_bytes()
    finally:
        transformer.set_attn_implementation(previous_attention)
        transformer.train(was_training)


def _fuse(source: Path, target: Path, num_heads: int, hidden_size: int) -> Path:
    """onnxruntime's BERT fusion: Attention, EmbedLayerNormalization, SkipLayerNorm, BiasGelu."""
    from onnxruntime.transformers import optimizer

    fused = optimizer.optimize_model(
        str(source), model_type="bert", num_heads=num_heads, hidden_size=hidden_size, opt_level=1
    )
    fused.save_model_to_file(str(target))
    return target


class _DropPreprocessingHint(logging.Filter):
    """onnxruntime logs a generic 'run pre-processing' hint on every call; it does not apply here."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "pre-processing before quantization" not in record.getMessage()


def _quantize(source: Path, target: Path) -> Path:
    """int8 dynamic quantization, per output channel (per-tensor loses too much accuracy)."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    hint_filter = _DropPreprocessingHint()
    root = logging.getLogger()
    root.addFilter(hint_filter)
    try:
        quantize_dynamic(
            str(source),
            str(target),
            weight_type=QuantType.QInt8,
            per_channel=True,
            # Fused ops carry no inferred output types; their tensors are float.
            extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
        )
    finally:
        root.removeFilter(hint_filter)
    return target
