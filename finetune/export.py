"""Export a trained peft LoRA adapter as a GGUF LoRA adapter that llama.cpp loads (``lora_path``).

No llama.cpp checkout is needed: the ``gguf`` package writes the file. llama.cpp matches an
adapter to its base by architecture and tensor names, so the names follow llama.cpp's GGUF
naming (``blk.N.attn_q.weight.lora_a``) and the metadata says ``general.type = adapter``.
Only plain LoRA is representable (no rsLoRA, DoRA, per-module ranks or alphas, no adapters on
embeddings or the output layer); anything else is refused rather than exported wrong.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from hybrid_common.errors import ArtifactError

__all__ = ["HF_TO_GGUF_MODULES", "export_adapter", "gguf_tensors_from_peft", "write_lora_gguf"]

# Hugging Face projection name → llama.cpp GGUF tensor name (per block).
HF_TO_GGUF_MODULES: dict[str, str] = {
    "q_proj": "attn_q",
    "k_proj": "attn_k",
    "v_proj": "attn_v",
    "o_proj": "attn_output",
    "gate_proj": "ffn_gate",
    "up_proj": "ffn_up",
    "down_proj": "ffn_down",
}
_PEFT_KEY = re.compile(r"(?:^|\.)layers\.(\d+)\.(?:self_attn|mlp)\.(\w+)\.lora_([AB])\.weight$")


def _check_plain_lora(adapter_config: Mapping[str, Any]) -> None:
    refused = {
        "use_rslora": adapter_config.get("use_rslora"),
        "use_dora": adapter_config.get("use_dora"),
        "rank_pattern": adapter_config.get("rank_pattern"),
        "alpha_pattern": adapter_config.get("alpha_pattern"),
        "modules_to_save": adapter_config.get("modules_to_save"),
    }
    present = [name for name, value in refused.items() if value]
    if present:
        raise ArtifactError(f"GGUF LoRA export supports plain LoRA only; this adapter uses {', '.join(present)}")


def gguf_tensors_from_peft(state: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """Rename a peft adapter state dict to GGUF LoRA tensors (``lora_a`` is r×in, ``lora_b`` out×r)."""
    tensors: dict[str, np.ndarray] = {}
    for key, value in state.items():
        match = _PEFT_KEY.search(key)
        if match is None:
            raise ArtifactError(f"cannot map adapter tensor {key!r} to a llama.cpp tensor")
        layer, module, which = match.groups()
        if module not in HF_TO_GGUF_MODULES:
            raise ArtifactError(f"llama.cpp has no LoRA target for module {module!r} (tensor {key!r})")
        array = value.detach().float().cpu().numpy() if hasattr(value, "detach") else np.asarray(value, dtype=np.float32)
        tensors[f"blk.{layer}.{HF_TO_GGUF_MODULES[module]}.weight.lora_{which.lower()}"] = np.ascontiguousarray(array, dtype=np.float32)
    if not tensors:
        raise ArtifactError("the adapter holds no LoRA tensors")
    return tensors


def write_lora_gguf(
    tensors: Mapping[str, np.ndarray], path: str | Path, *, alpha: float, architecture: str = "gemma3"
) -> Path:
    """Write GGUF LoRA ``tensors`` to ``path`` atomically (temporary file, fsync, rename)."""
    import gguf

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        writer = gguf.GGUFWriter(tmp_name, arch=architecture)
        writer.add_string("general.type", "adapter")
        writer.add_string("adapter.type", "lora")
        writer.add_float32("adapter.lora.alpha", float(alpha))
        for name in sorted(tensors):
            writer.add_tensor(name, np.ascontiguousarray(tensors[name], dtype=np.float32))
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        with open(tmp_name, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    return path


def export_adapter(adapter_dir: str | Path, path: str | Path, *, architecture: str = "gemma3") -> Path:
    """Convert a peft adapter directory (``save_pretrained`` output) to a GGUF LoRA adapter."""
    from safetensors.numpy import load_file

    adapter_dir = Path(adapter_dir)
    try:
        adapter_config = json.loads((adapter_dir / "adapter_config.json").read_text())
        state = load_file(adapter_dir / "adapter_model.safetensors")
    except (OSError, ValueError) as err:
        raise ArtifactError(f"{adapter_dir}: not a readable peft adapter: {err}") from err
    _check_plain_lora(adapter_config)
    return write_lora_gguf(
        gguf_tensors_from_peft(state), path, alpha=float(adapter_config["lora_alpha"]), architecture=architecture
    )
