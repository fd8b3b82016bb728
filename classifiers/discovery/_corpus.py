"""What discovery reads: logged queries, embedded page by page with the ONNX encoder.

Only the query text, its request id and whether it was private stay in memory (plus one float32
row per query: 100,000 queries are 150 MB); answers are read back from the log for the few
members whose answers are compared.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from hybrid_common.chat import logged_query
from hybrid_common.errors import ArtifactError
from hybrid_common.pii import PiiMatcher

__all__ = ["LoggedQueries", "PRIVATE_REASONS", "discovery_encoder", "read_logged_queries"]

logger = logging.getLogger(__name__)

# Routing reasons that mean the query was kept on the machine (router.types.Reason values).
PRIVATE_REASONS = frozenset({"private_category", "pii_match", "private_handoff"})


@dataclass
class LoggedQueries:
    """Queries from the traffic log with their embeddings (rows aligned)."""

    request_ids: list[str] = field(default_factory=list)
    texts: list[str] = field(default_factory=list)
    private: list[bool] = field(default_factory=list)
    embeddings: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), dtype=np.float32))
    skipped: int = 0


def read_logged_queries(
    pages: Iterable[list[tuple[int, Any]]],
    encode: Callable[[list[str]], np.ndarray],
    *,
    pii: PiiMatcher,
    limit: int | None = None,
    progress: bool = False,
) -> LoggedQueries:
    """Every logged text query, embedded page by page (one page of text in flight at a time)."""
    from tqdm.auto import tqdm

    out = LoggedQueries()
    blocks: list[np.ndarray] = []
    bar = tqdm(desc="embedding logged queries", unit="query", disable=not progress)
    for page in pages:
        texts, ids, private = [], [], []
        for _, record in page:
            query = logged_query(record.messages) if record.error_type is None else None
            if query is None:
                out.skipped += 1
                continue
            texts.append(query)
            ids.append(record.id)
            private.append(record.reason in PRIVATE_REASONS or pii.find(query) is not None)
        if limit is not None:
            room = limit - len(out.texts)
            texts, ids, private = texts[:room], ids[:room], private[:room]
        if texts:
            blocks.append(np.asarray(encode(texts), dtype=np.float32))
            out.texts += texts
            out.request_ids += ids
            out.private += private
            bar.update(len(texts))
        if limit is not None and len(out.texts) >= limit:
            break
    bar.close()
    out.embeddings = np.concatenate(blocks) if blocks else np.zeros((0, 0), dtype=np.float32)
    return out


def discovery_encoder(classifier_path: str | Path | None, cache_dir: str | Path, *, source: str | Path | None = None) -> Any:
    """The ONNX encoder discovery embeds with.

    A classifier whose encoder is the untuned packaged one already carries it in ONNX; otherwise
    the packaged sentence-transformers model (or ``source``) is exported once (torch, about 20 s)
    into ``cache_dir`` and reused: keyed by the source files' checksum, so a new encoder is a new
    export, never a stale one.
    """
    from classifiers.encoders import OnnxEncoder, SentenceTransformerEncoder, default_encoder_path

    if classifier_path is not None:
        from classifiers.embedding import EmbeddingClassifier

        classifier = EmbeddingClassifier.load(classifier_path)
        if classifier.encoder_is_base:
            return classifier.encoder_
    src = Path(source) if source is not None else default_encoder_path()
    key = _dir_digest(src)
    target = Path(cache_dir) / f"encoder-{key}"
    if (target / "model.onnx").is_file():
        return OnnxEncoder.from_dir(target)
    logger.info("exporting the encoder %s to ONNX once (cached in %s)", src, target)
    try:
        encoder = SentenceTransformerEncoder(src).to_onnx()
    except ImportError as err:
        raise ArtifactError(
            "discovery needs the encoder in ONNX: exporting it once needs the train extra (pip install 'hybrid-router[train]')"
        ) from err
    staging = target.with_name(target.name + ".tmp")
    encoder.save(staging)
    staging.replace(target)
    return OnnxEncoder.from_dir(target)


def _dir_digest(path: Path) -> str:
    digest = hashlib.sha256()
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        digest.update(str(file.relative_to(path)).encode())
        digest.update(str(file.stat().st_size).encode())
    return digest.hexdigest()[:16]
