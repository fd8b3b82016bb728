"""The few llama.cpp calls continuous batching needs, over llama-cpp-python's low-level API.

``Llama`` (the high-level class) owns a one-sequence context and decodes one prompt at a time;
batching many sequences needs the context built with ``n_seq_max`` and the batch filled by hand
(llama.cpp's ``llama_batch`` / ``llama_decode``, the way its own server's parallel slots work).
Everything here runs on the scheduler thread that owns the context; nothing is thread-safe.

The KV memory is *unified* (one pool of cells shared by all sequences), so a sequence takes the
cells it needs rather than ``n_ctx / n_seq_max``, and copying a cached prefix to a new sequence
shares its cells instead of copying them. Sliding-window layers keep only their window
(``swa_full=False``): on Gemma 3 that is five layers in six, which keeps a 16-sequence budget small.

The GIL: llama-cpp-python binds the library with ``ctypes.CDLL``, which releases the GIL around
every call, and getting it back means waiting for the thread that took it. In the router the
scheduler thread shares the process with every request thread; during a burst dozens of them
want the GIL, and each wait costs many switch intervals. Measured on 2 cores with 32 busy Python
threads: a one-token step (decode, logits, argmax, end check, piece) took 290 ms at the median
against 106 ms for the decode alone and 18 ms quiet. So only ``llama_decode`` (long: the request
threads should run meanwhile) and the numpy argmax release it; the calls that take microseconds
(logits pointer, piece, end-of-generation check, KV edits) go through a
``ctypes.PyDLL`` view of the same library, which keeps the GIL, and a step's greedy rows are
argmaxed in one numpy call (one release, not one a sequence).
"""

from __future__ import annotations

import codecs
import ctypes
import functools
import importlib
import logging
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hybrid_common.errors import ArtifactError, MissingDependencyError
from router._request import GenerationParams

__all__ = ["NativeBatch", "NativeContextSettings", "TokenSampler", "warn_if_torch_shares_openmp"]

logger = logging.getLogger("router")

_PENALTY_LAST_N = 64  # llama-cpp-python's default window, so sampling matches the one-sequence path
_TOP_K = 40
_MIN_P = 0.05
_DEFAULT_SEED = 0xFFFFFFFF  # llama.cpp: draw a random seed

_backend_ready = threading.Lock()
_backend_initialised = False
_torch_warned = False


def warn_if_torch_shares_openmp() -> bool:
    """Warn (once per process) when torch is loaded beside the local tier; True if it warned now.

    torch's wheel ships its own ``libgomp.so.1``, and llama.cpp's CPU backend, loaded after it,
    binds to that same OpenMP runtime. Once torch has run in the process (training a classifier,
    say), the local tier's decode steps were measured 1.5-2x slower on 2 cores (``make demo``: 20.6
    to 40.7 ms a token). Serving itself never imports torch.
    """
    global _torch_warned
    if _torch_warned or "torch" not in sys.modules:
        return False
    _torch_warned = True
    logger.warning(
        "torch is loaded in the process that runs the local model: llama.cpp then shares torch's OpenMP runtime "
        "and decoded 1.5-2x slower once torch had run (measured on 2 cores); serve from a process that does not "
        "use torch, and train classifiers and adapters in another one"
    )
    return True


def _llama_cpp() -> Any:
    global _backend_initialised
    try:
        import llama_cpp
    except ImportError as err:
        raise MissingDependencyError("llama-cpp-python", purpose="the local tier") from err
    with _backend_ready:
        if not _backend_initialised:
            warn_if_torch_shares_openmp()
            llama_cpp.llama_backend_init()
            _backend_initialised = True
    return llama_cpp


_QUICK_CALLS = (
    "llama_get_logits_ith",
    "llama_token_to_piece",
    "llama_vocab_is_eog",
    "llama_memory_seq_rm",
    "llama_memory_seq_cp",
)


@functools.cache  # one binding per process: every rebuilt context shares it
def _gil_holding_calls(lib: Any) -> Any:
    """The same library's short functions bound through ``ctypes.PyDLL`` (which keeps the GIL
    during the call), with llama-cpp-python's own signatures."""
    loaded = importlib.import_module(f"{lib.__name__}.llama_cpp")._lib  # the CDLL it loaded; dlopen returns it again
    quick = ctypes.PyDLL(loaded._name)
    for name in _QUICK_CALLS:
        source, target = getattr(loaded, name), getattr(quick, name)
        target.argtypes, target.restype = source.argtypes, source.restype
    return quick


@dataclass(frozen=True)
class NativeContextSettings:
    """What the context is built with: the model, the KV budget and the batch shape."""

    model_path: Path
    kv_tokens: int
    """Cells in the unified KV memory, shared by every live sequence and cached prefix."""
    n_seq_max: int
    """Sequence ids the context accepts: live sequences plus cached prefixes."""
    n_batch: int
    """Most tokens one ``llama_decode`` carries (decode steps plus prefill chunks)."""
    n_threads: int
    flash_attention: bool = False
    """Off by default: the one-sequence path (``Llama``) runs without it, and with the shipped
    adapter the two round differently enough to pick other words on near ties."""


class NativeBatch:
    """One model, one multi-sequence context, one reusable ``llama_batch`` and the LoRA adapters it
    serves (loaded once each; one of them, or none, applied to each decode)."""

    def __init__(self, settings: NativeContextSettings, adapter_path: Path | None) -> None:
        lib = self._lib = _llama_cpp()
        self._quick = _gil_holding_calls(lib)
        self.settings = settings
        self._model = None
        self._ctx = None
        self._batch = None
        self._adapters: dict[Path, Any] = {}  # loaded LoRA handles by file
        self._applied: Path | None = None
        model_params = lib.llama_model_default_params()
        self._model = lib.llama_model_load_from_file(str(settings.model_path).encode("utf-8"), model_params)
        if not self._model:
            raise ArtifactError(f"llama.cpp could not load the model {settings.model_path}")
        try:
            params = lib.llama_context_default_params()
            params.n_ctx = settings.kv_tokens
            params.n_batch = settings.n_batch
            params.n_ubatch = settings.n_batch
            params.n_seq_max = settings.n_seq_max
            params.n_threads = settings.n_threads
            params.n_threads_batch = settings.n_threads
            params.kv_unified = True
            params.swa_full = False
            params.no_perf = True
            params.flash_attn_type = 1 if settings.flash_attention else 0
            self._ctx = lib.llama_init_from_model(self._model, params)
            if not self._ctx:
                raise ArtifactError(
                    f"llama.cpp could not allocate a context of {settings.kv_tokens} KV cells for "
                    f"{settings.n_seq_max} sequences"
                )
            self._memory = lib.llama_get_memory(self._ctx)
            self._vocab = lib.llama_model_get_vocab(self._model)
            self.n_vocab = lib.llama_vocab_n_tokens(self._vocab)
            swa = int(lib.llama_model_n_swa(self._model))
            self.prefix_limit: int | None = swa if swa > 0 else None
            """Longest prompt start worth caching. With sliding-window layers (and ``swa_full`` off),
            llama.cpp may hand a cell that fell out of a sequence's window to another sequence; a cached
            prompt no longer than the window has no such cell, so every cell a reuse needs is still there."""
            self._batch = lib.llama_batch_init(settings.n_batch, 0, 1)
            self._piece = ctypes.create_string_buffer(256)
            self.use_adapter(adapter_path)
        except BaseException:
            self.close()
            raise

    # -- adapters ---------------------------------------------------------------------------------

    @property
    def adapter_path(self) -> Path | None:
        """The adapter the next decode runs under (None: the base model)."""
        return self._applied

    @property
    def loaded_adapters(self) -> frozenset[Path]:
        return frozenset(self._adapters)

    def load_adapter(self, adapter_path: Path) -> None:
        """Load ``adapter_path`` once and keep its handle, so applying it later costs no reload."""
        if adapter_path in self._adapters:
            return
        if not Path(adapter_path).is_file():
            raise ArtifactError(f"no such LoRA adapter file: {adapter_path}")
        handle = self._lib.llama_adapter_lora_init(self._model, str(adapter_path).encode("utf-8"))
        if not handle:  # a NULL pointer: wrong architecture or shapes, or a damaged file
            raise ArtifactError(
                f"llama.cpp refused the LoRA adapter {adapter_path}: not a LoRA for this base model "
                "(architecture or tensor shapes differ) or a damaged file"
            )
        self._adapters[adapter_path] = handle

    def apply_adapter(self, adapter_path: Path | None) -> None:
        """Run the next decodes under the loaded ``adapter_path`` (None: the base model).

        Only the adapter set of the context changes (no reload); a sequence's KV cells stay those
        computed under the adapter it was decoded with, so callers decode each sequence under its own.
        A change costs llama.cpp a re-plan of its compute graph in the next decode: measured here
        (2 threads, 8,192 cells, batches of 148), one sequence's decode took 20.1 ms after a switch
        against 15.5 ms without (about 4 ms of re-planning); this call itself takes 0.06 ms.
        """
        if adapter_path == self._applied:
            return
        lib = self._lib
        if adapter_path is None:
            failed = lib.llama_set_adapters_lora(self._ctx, None, 0, None)
        else:
            adapters = (lib.llama_adapter_lora_p_ctypes * 1)(self._adapters[adapter_path])
            failed = lib.llama_set_adapters_lora(self._ctx, adapters, 1, (ctypes.c_float * 1)(1.0))
        if failed:
            raise ArtifactError(f"llama.cpp could not apply the LoRA adapter {adapter_path}")
        self._applied = adapter_path

    def free_adapter(self, adapter_path: Path) -> None:
        """Free a loaded adapter (taken off the context first if it is the applied one)."""
        if adapter_path == self._applied:
            self.apply_adapter(None)
        handle = self._adapters.pop(adapter_path, None)
        if handle is not None:
            self._lib.llama_adapter_lora_free(handle)

    def use_adapter(self, adapter_path: Path | None) -> None:
        """Serve ``adapter_path`` alone (None: the base model) from the next decode and free every
        other loaded adapter; on a refusal nothing changes."""
        fresh = None
        if adapter_path is not None and adapter_path not in self._adapters:
            self.load_adapter(adapter_path)
            fresh = adapter_path
        try:
            self.apply_adapter(adapter_path)
        except ArtifactError:
            if fresh is not None:
                self.free_adapter(fresh)
            raise
        for other in self.loaded_adapters - {adapter_path}:
            self.free_adapter(other)

    # -- one step ---------------------------------------------------------------------------------

    def decode(self, entries: list[tuple[int, int, int, bool]]) -> int:
        """Decode ``(token, position, seq_id, wants_logits)`` entries as one batch; llama.cpp's
        return code (0 ok, 1 no KV room, negative an error). Logits are read by entry index."""
        batch = self._batch
        for i, (token, pos, seq, logits) in enumerate(entries):
            batch.token[i] = token
            batch.pos[i] = pos
            batch.n_seq_id[i] = 1
            batch.seq_id[i][0] = seq
            batch.logits[i] = logits
        batch.n_tokens = len(entries)
        return int(self._lib.llama_decode(self._ctx, batch))

    def argmax(self, index: int) -> int:
        """The greedy token for the batch entry ``index`` (numpy over the logits, no sampler copy)."""
        return self.argmax_many([index])[0]

    def argmax_many(self, indices: list[int]) -> list[int]:
        """The greedy tokens for the batch entries ``indices`` in one numpy call where their logits
        rows lie one after the other (llama.cpp stores a step's outputs in batch order), else a call
        a row."""
        import numpy as np

        if not indices:
            return []
        n_vocab = self.n_vocab
        row_bytes = n_vocab * ctypes.sizeof(ctypes.c_float)
        pointers = [self._quick.llama_get_logits_ith(self._ctx, index) for index in indices]
        first = ctypes.addressof(pointers[0].contents)
        if all(ctypes.addressof(p.contents) == first + i * row_bytes for i, p in enumerate(pointers)):
            rows = np.ctypeslib.as_array(pointers[0], shape=(len(indices), n_vocab))
            return [int(token) for token in rows.argmax(axis=1)]
        return [int(np.ctypeslib.as_array(p, shape=(n_vocab,)).argmax()) for p in pointers]

    def sample(self, sampler: TokenSampler, index: int) -> int:
        return int(self._lib.llama_sampler_sample(sampler.chain, self._ctx, index))

    def is_end(self, token: int) -> bool:
        return bool(self._quick.llama_vocab_is_eog(self._vocab, token))

    def piece(self, token: int) -> bytes:
        """The bytes of one token (control tokens render as nothing)."""
        n = self._quick.llama_token_to_piece(self._vocab, token, self._piece, len(self._piece), 0, False)
        if n < 0:
            self._piece = ctypes.create_string_buffer(-n)
            n = self._quick.llama_token_to_piece(self._vocab, token, self._piece, len(self._piece), 0, False)
        return self._piece.raw[:n]

    # -- KV memory --------------------------------------------------------------------------------

    def forget(self, seq: int) -> None:
        """Free every cell of sequence ``seq`` (cells shared with a cached prefix stay)."""
        self._quick.llama_memory_seq_rm(self._memory, seq, -1, -1)

    def copy_prefix(self, source: int, target: int, length: int) -> None:
        """Give ``target`` the first ``length`` positions of ``source`` (shared cells, no copy)."""
        self._quick.llama_memory_seq_cp(self._memory, source, target, 0, length)

    def clear(self) -> None:
        self._lib.llama_memory_clear(self._memory, True)

    def new_sampler(self, params: GenerationParams) -> TokenSampler | None:
        """A sampler chain for ``params``; None for plain greedy (argmax is faster and identical)."""
        temperature = params.temperature if params.temperature is not None else 0.0
        freq = params.frequency_penalty or 0.0
        presence = params.presence_penalty or 0.0
        if temperature <= 0.0 and freq == 0.0 and presence == 0.0:
            return None
        return TokenSampler(self._lib, params, temperature, freq, presence, n_vocab=self.n_vocab)

    def close(self) -> None:
        lib = self._lib
        if self._batch is not None:
            lib.llama_batch_free(self._batch)
            self._batch = None
        if self._ctx is not None:
            lib.llama_free(self._ctx)
            self._ctx = None
        for handle in self._adapters.values():  # after the context that may hold them
            lib.llama_adapter_lora_free(handle)
        self._adapters.clear()
        self._applied = None
        if self._model is not None:
            lib.llama_model_free(self._model)
            self._model = None


class TokenSampler:
    """One sequence's sampler chain, in llama-cpp-python's order (penalties, top-k, top-p, min-p,
    temperature, seeded draw), so a request samples as it did on the one-sequence path."""

    def __init__(
        self, lib: Any, params: GenerationParams, temperature: float, freq: float, presence: float, *, n_vocab: int
    ) -> None:
        self._lib = lib
        chain = lib.llama_sampler_chain_init(lib.llama_sampler_chain_default_params())
        self.chain = chain
        add = lib.llama_sampler_chain_add
        if freq or presence:
            # this llama.cpp still takes n_vocab first (include/llama.h), as llama-cpp-python's own sampler passes it
            add(chain, lib.llama_sampler_init_penalties(n_vocab, _PENALTY_LAST_N, 1.0, freq, presence))
        if temperature <= 0.0:
            add(chain, lib.llama_sampler_init_greedy())
            return
        top_p = params.top_p if params.top_p is not None else 1.0
        add(chain, lib.llama_sampler_init_top_k(_TOP_K))
        add(chain, lib.llama_sampler_init_top_p(top_p, 1))
        add(chain, lib.llama_sampler_init_min_p(_MIN_P, 1))
        add(chain, lib.llama_sampler_init_temp(temperature))
        add(chain, lib.llama_sampler_init_dist(params.seed if params.seed is not None else _DEFAULT_SEED))

    def close(self) -> None:
        if self.chain is not None:
            self._lib.llama_sampler_free(self.chain)
            self.chain = None


class PieceDecoder:
    """Token bytes to text, holding back an incomplete UTF-8 character until its last byte."""

    def __init__(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def feed(self, data: bytes) -> str:
        return self._decoder.decode(data)

    def flush(self) -> str:
        return self._decoder.decode(b"", final=True)
