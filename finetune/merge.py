"""A merged model: base GGUF + LoRA adapter folded into one F16 GGUF, re-quantizable by llama.cpp.

The adapter route (:mod:`finetune.export`) is the default: it keeps the served base bit-identical.
A merged file is for runtimes that cannot apply adapters, and for the pre-deployment check of
what re-quantization costs (:mod:`finetune.quant_report`). The packaged base is already Q4_K_M,
so the F16 merge is "dequantized base + exact LoRA delta"; quantizing it again is a second
rounding, which the report measures rather than assumes away.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Literal

import numpy as np

from hybrid_common.errors import ArtifactError, MissingDependencyError

__all__ = ["QUANT_TYPES", "merge_adapter", "quantize_gguf"]

# llama.cpp ftype codes (llama.h, LLAMA_FTYPE_MOSTLY_*).
QUANT_TYPES: dict[str, int] = {"Q4_K_M": 15, "Q5_K_M": 17, "Q8_0": 7}
_F16_FTYPE = 1


def _lora_deltas(adapter: Path) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], float]:
    import gguf

    reader = gguf.GGUFReader(adapter)
    alpha_field = reader.fields.get("adapter.lora.alpha")
    if alpha_field is None:
        raise ArtifactError(f"{adapter} is not a GGUF LoRA adapter (no adapter.lora.alpha)")
    alpha = float(alpha_field.contents())
    a: dict[str, np.ndarray] = {}
    b: dict[str, np.ndarray] = {}
    for tensor in reader.tensors:
        base_name, _, which = tensor.name.rpartition(".lora_")
        # GGUF shapes are innermost-first; numpy's are the reverse: lora_a (r, in), lora_b (out, r).
        array = np.asarray(tensor.data, dtype=np.float32).reshape(tuple(reversed([int(n) for n in tensor.shape])))
        (a if which == "a" else b)[base_name] = array
    if set(a) != set(b):
        raise ArtifactError(f"{adapter}: unpaired LoRA tensors {sorted(set(a) ^ set(b))}")
    return a, b, alpha


def merge_adapter(
    base_gguf: str | Path, adapter_gguf: str | Path | None, out_path: str | Path, *, progress: Callable[[str], None] | None = None
) -> Path:
    """Write ``base + alpha/r * B @ A`` for every adapted weight as an F16 GGUF (norms stay F32).

    With ``adapter_gguf=None`` this is the dequantized base alone (the F16 reference)."""
    try:
        import gguf
        from gguf.quants import dequantize
    except ImportError as err:
        raise MissingDependencyError("gguf", extra="train", purpose="merging adapters") from err

    base_gguf, out_path = Path(base_gguf), Path(out_path)
    a, b, alpha = _lora_deltas(Path(adapter_gguf)) if adapter_gguf else ({}, {}, 0.0)
    reader = gguf.GGUFReader(base_gguf)
    architecture = reader.fields["general.architecture"].contents()
    unknown = set(a) - {t.name for t in reader.tensors}
    if unknown:
        raise ArtifactError(f"the adapter targets tensors the base does not have: {sorted(unknown)[:3]}")

    out_path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{out_path.name}.", suffix=".tmp", dir=out_path.parent)
    os.close(fd)
    try:
        writer = gguf.GGUFWriter(tmp, arch=architecture, use_temp_file=True)
        for field in reader.fields.values():
            if field.name == "general.architecture" or field.name.startswith("GGUF."):
                continue  # written by GGUFWriter itself
            if field.name == "general.file_type":
                writer.add_file_type(_F16_FTYPE)
                continue
            kind = field.types[0]
            sub = field.types[-1] if kind == gguf.GGUFValueType.ARRAY else None
            writer.add_key_value(field.name, field.contents(), kind, sub_type=sub)
        for tensor in reader.tensors:
            weights = dequantize(tensor.data, tensor.tensor_type).astype(np.float32)
            weights = weights.reshape(tuple(reversed([int(n) for n in tensor.shape])))
            if tensor.name in a:
                rank = a[tensor.name].shape[0]
                weights = weights + (alpha / rank) * (b[tensor.name] @ a[tensor.name])
            # 1-D tensors (norms) stay F32, as llama.cpp's own converters leave them.
            writer.add_tensor(tensor.name, weights.astype(np.float16 if weights.ndim > 1 else np.float32))
            if progress:
                progress(tensor.name)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        os.replace(tmp, out_path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return out_path


def quantize_gguf(source: str | Path, out_path: str | Path, kind: Literal["Q4_K_M", "Q5_K_M", "Q8_0"], *, threads: int | None = None) -> Path:
    """Re-quantize a GGUF with llama.cpp's own quantizer (about 5 s for 270M parameters)."""
    try:
        import llama_cpp
    except ImportError as err:
        raise MissingDependencyError("llama-cpp-python", purpose="quantization") from err
    if kind not in QUANT_TYPES:
        raise ArtifactError(f"unknown quantization {kind!r}; choose from {', '.join(QUANT_TYPES)}")
    out_path = Path(out_path)
    tmp = out_path.with_name(f".{out_path.name}.tmp")
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = QUANT_TYPES[kind]
    params.nthread = threads or os.cpu_count() or 1
    code = llama_cpp.llama_model_quantize(str(source).encode(), str(tmp).encode(), params)
    if code != 0 or not tmp.is_file():
        tmp.unlink(missing_ok=True)
        raise ArtifactError(f"llama.cpp could not quantize {source} to {kind} (code {code})")
    os.replace(tmp, out_path)
    return out_path
