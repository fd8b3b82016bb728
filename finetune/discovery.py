"""``discover()``: read the traffic log, propose categories, write the proposal and its report."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hybrid_common.errors import ArtifactError
from hybrid_common.pii import PiiMatcher

from classifiers.discovery import DiscoveryConfig, Proposal, ProposalStore, discovery_encoder, propose, read_logged_queries, write_html

__all__ = ["DiscoveryRun", "accept_by_thresholds", "cloud_namer", "discover"]

_NAMING_PROMPT = (
    "These are customer queries that belong to one category. Name the category in one to three English "
    "words, UPPER_SNAKE_CASE, for example ORDER_STATUS. Reply with the name only."
)

logger = logging.getLogger(__name__)


@dataclass
class DiscoveryRun:
    """What one ``discover()`` wrote, with the figures a caller prints."""

    proposal: Proposal
    store: ProposalStore
    queries: int
    skipped: int
    noise_share: float
    clusters_found: int
    seconds: float
    granularity: str = ""
    """How the number of clusters was decided (see ``classifiers.discovery.DiscoveryResult``)."""


def accept_by_thresholds(proposal: Proposal, config: DiscoveryConfig) -> list[str]:
    """``--auto``: accept every proposed (clean, covering) category; mark PII-heavy ones private."""
    names = []
    for category in proposal.categories:
        if category.proposed and category.status == "proposed":
            category.status = "accepted"
            category.private = category.private or category.pii_share >= config.private_share
            names.append(category.name)
    return names


def discover(
    log_path: str | Path,
    store_dir: str | Path,
    *,
    config: DiscoveryConfig | None = None,
    classifier_path: str | Path | None = None,
    encoder_cache: str | Path | None = None,
    pii_patterns: Mapping[str, str] | None = None,
    auto: bool = False,
    progress: bool = True,
    namer: Callable[[list[str]], str | None] | None = None,
) -> DiscoveryRun:
    """Cluster the logged queries and write ``store_dir/proposal.yaml`` (+ vectors, HTML report).

    A proposal already in ``store_dir`` is read first: its accepted categories keep their
    queries and names, and clusters seen before keep their status. With ``auto``, clean
    clusters covering the target share are accepted without review. ``namer`` names new clusters
    (see :func:`cloud_namer`); it never sees a private or PII query.
    """
    from router.traffic_log import TrafficLog

    config = config or DiscoveryConfig()
    started = time.perf_counter()
    store = ProposalStore(store_dir)
    previous = store.load() if store.exists() else None
    previous_vectors = store.load_vectors() if previous is not None else None
    from router.log_stores import is_database_url, masked_url

    shown = masked_url(str(log_path))  # a PostgreSQL URL may hold a password: never written or printed
    if not is_database_url(log_path) and not Path(log_path).is_file():
        raise ArtifactError(f"no traffic log at {log_path}: route some traffic first")
    encoder = discovery_encoder(classifier_path, encoder_cache or Path(store_dir) / "cache")
    pii = PiiMatcher(pii_patterns)

    def encode(texts: list[str]) -> Any:
        return encoder.encode(texts, n_jobs=2)

    with TrafficLog(log_path, spool=False) as log:
        queries = read_logged_queries(log.pages(), encode, pii=pii, limit=config.max_queries, progress=progress)
        if len(queries.texts) < 16:
            raise ArtifactError(f"only {len(queries.texts)} text queries in {shown}: too few to find categories")

        def answers_for(request_ids: list[str]) -> dict[str, str]:
            out = {}
            for request_id in request_ids:
                record = log.get(request_id)
                if record is not None and record.tier == "cloud" and record.response:
                    out[request_id] = record.response
            return out

        result = propose(
            queries, encode=encode, answers_for=answers_for, config=config, pii=pii, previous=previous,
            previous_vectors=previous_vectors, log_path=shown, encoder_sha256=encoder.sha256, namer=namer,
        )  # fmt: skip
    if auto:
        accepted = accept_by_thresholds(result.proposal, config)
        logger.info("accepted %d categories by thresholds: %s", len(accepted), ", ".join(accepted))
    store.save(result.proposal, result.vectors)
    write_html(result.proposal, store.html_path)
    return DiscoveryRun(
        proposal=result.proposal, store=store, queries=len(queries.texts), skipped=queries.skipped,
        noise_share=result.noise_share, clusters_found=result.clusters_found, seconds=time.perf_counter() - started,
        granularity=result.granularity,
    )  # fmt: skip


def cloud_namer(config: Any, model: str | None = None) -> Callable[[list[str]], str | None]:
    """Names clusters with the router's cloud model through litellm (``router discover --name-with-cloud``).

    The route (model, base URL, key) is the one the router would use for ``model`` (default: the
    cloud default model). :func:`discover` only ever passes it non-private, PII-free queries.
    """
    import litellm

    name = model or config.cloud.default_model
    route = config.models.get(name)
    kwargs: dict[str, Any] = {"model": route.litellm_model if route is not None else name, "max_tokens": 16, "temperature": 0.0}
    if route is not None and route.api_base:
        kwargs["api_base"] = route.api_base
    key = route.resolved_api_key() if route is not None else None
    if key is not None:
        kwargs["api_key"] = key

    def name_cluster(examples: list[str]) -> str | None:
        listing = "\n".join(f"- {e}" for e in examples)
        response = litellm.completion(messages=[{"role": "system", "content": _NAMING_PROMPT}, {"role": "user", "content": listing}], **kwargs)
        return response.choices[0].message.content

    return name_cluster
