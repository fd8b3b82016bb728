"""Export a sentence-transformers transformer to ONNX, then fuse and optionally quantize it.

Runs at fit time only (needs torch and onnx). torch 2.13 defaults to the dynamo exporter, which
needs onnxscript; the TorchScript exporter (``dynamo=False``) still works and is what we use.

The graph is the whole request path, not just the encoder: mean pooling, L2 normalisation, the
head's logits and the max cosines to the training memory and to the known out-of-scope exemplars
all run inside the one ORT call, on ORT's own (non-spinning) threads. The head's arrays are graph
*inputs* (fed at run time), so the encoder file's identity does not depend on the head. Doing the
memory product in numpy instead sent it to OpenBLAS, which runs a vector-matrix product of this
size on every core: with the local LLM generating on the other core that stalled on thread
hand-offs, and classification p99 under generation was 26 ms instead of about 10 (see
evals/README.md). Imported only from fitting code, so torch is imported at the top.
"""

from __future__ import annotations

import logging
import tempfile
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F  # noqa: N812 - the conventional alias

from .encoders import HEAD_INPUTS, OUTPUTS

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

_INPUTS = ["input_ids", "attention_mask", "token_type_ids"]
_SAMPLE = ["a padded example sentence for tracing the mask path", "short"]


class _ServingGraph(torch.nn.Module):
    """Token ids and head arrays in; sentence embedding, head logits and the two max cosines out.

    ``head_coef_t`` is (dim, classes), ``memory_t`` is (dim, rows), ``exemplars_t`` is (dim,
    exemplars): transposed so that the products are plain MatMuls with no per-call Transpose.
    """

    def __init__(self, transformer: torch.nn.Module) -> None:
        super().__init__()
        self.transformer = transformer

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        token_type_ids: torch.Tensor,
        head_coef_t: torch.Tensor,
        head_intercept: torch.Tensor,
        memory_t: torch.Tensor,
        exemplars_t: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        hidden = self.transformer(
            input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
        ).last_hidden_state
        weights = attention_mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1e-9)
        embedding = F.normalize(pooled, dim=1)
        logits = embedding @ head_coef_t + head_intercept
        max_cosine = (embedding @ memory_t).amax(dim=1)
        max_exemplar_cosine = (embedding @ exemplars_t).amax(dim=1)
        return embedding, logits, max_cosine, max_exemplar_cosine


def export_transformer(model: SentenceTransformer, *, optimize: bool = True, quantize: bool = False) -> bytes:
    """ONNX bytes of ``model``'s transformer plus pooling and the head products (see module doc)."""
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
        dim = config.hidden_size
        head = (torch.zeros(dim, 3), torch.zeros(3), torch.zeros(dim, 5), torch.zeros(dim, 2))
        args = (*(sample[name] for name in _INPUTS), *head)
        axes = {name: {0: "batch", 1: "tokens"} for name in _INPUTS}
        axes |= {"head_coef_t": {1: "classes"}, "head_intercept": {0: "classes"}, "memory_t": {1: "rows"}}
        axes |= {"exemplars_t": {1: "exemplars"}}
        axes |= {"embedding": {0: "batch"}, "logits": {0: "batch", 1: "classes"}}
        axes |= {"max_cosine": {0: "batch"}, "max_exemplar_cosine": {0: "batch"}}
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
                    _ServingGraph(transformer),
                    args,
                    str(raw),
                    input_names=[*_INPUTS, *HEAD_INPUTS],
                    output_names=list(OUTPUTS),
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
            # Fused ops carry no inferred output types; their tensors are float. The head products
            # multiply by fed arrays, not weights: they stay float.
            extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT, "MatMulConstBOnly": True},
        )
    finally:
        root.removeFilter(hint_filter)
    return target
