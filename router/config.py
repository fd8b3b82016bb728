"""Configuration: pydantic models, loaded from TOML and the environment, validated once.

Precedence, highest first: keyword arguments, environment variables (``ROUTER_`` prefix, ``__``
between nesting levels, e.g. ``ROUTER_CLOUD__DEFAULT_MODEL``), the TOML file, defaults.
``ROUTER_CONFIG`` names a TOML file to load when none is passed explicitly.

One data directory (``$XDG_DATA_HOME/hybrid-router``, else ``~/.local/share/hybrid-router``)
holds the traffic log and the model registry by default, so a default ``Client()`` serves what a
default ``router retrain`` promotes. The ``[retrain]`` table travels with the rest of the file
and is validated by ``finetune`` (``router config`` checks it through the
``hybrid_router.config_sections`` entry points), so the router never imports the trainer.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Sequence
from contextvars import ContextVar
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from hybrid_common.base_errors import ConfigError
from hybrid_common.guard import DegenerationGuard
from hybrid_common.pii import DEFAULT_PII_PATTERNS, validate_patterns

__all__ = [
    "DEFAULT_PII_PATTERNS",
    "LEGACY_LOG",
    "LEGACY_REGISTRY",
    "LITELLM_CONTROL_KEYS",
    "CacheConfig",
    "CanaryConfig",
    "CategoryCacheConfig",
    "ClassifierConfig",
    "CloudConfig",
    "ConversationConfig",
    "LocalConfig",
    "LogConfig",
    "ModelRoute",
    "QualityConfig",
    "RouterConfig",
    "RoutingConfig",
    "ServerConfig",
    "data_dir",
    "default_cache_path",
    "default_classifier_registry_path",
    "default_log_path",
    "default_registry_path",
    "legacy_path_notes",
    "load_config",
    "validate_patterns",
]

# litellm options that decide where a call goes, with which credentials, how it is retried, or
# that answer without calling at all: never allowed as a route's extra_params (a request may set
# none of them anyway; see router._request).
LITELLM_CONTROL_KEYS = frozenset({
    "api_base", "base_url", "api_key", "api_version", "api_type", "organization", "headers", "extra_headers",
    "extra_body", "extra_query", "mock_response", "mock_tool_calls", "mock_timeout", "mock_delay", "custom_llm_provider",
    "num_retries", "max_retries", "timeout", "request_timeout", "stream_timeout", "callbacks", "success_callback",
    "failure_callback", "metadata", "model_list", "fallbacks", "context_window_fallback_dict", "deployment_id",
    "input_cost_per_token", "output_cost_per_token", "input_cost_per_second", "output_cost_per_second", "caching",
    "cache", "proxy_server_request", "azure_ad_token", "azure_ad_token_provider", "aws_access_key_id",
    "aws_secret_access_key", "aws_region_name", "vertex_project", "vertex_location", "vertex_credentials",
    "drop_params", "additional_drop_params", "model", "messages", "stream", "client", "acompletion", "user_continue_message",
})  # fmt: skip
# Defaults of earlier releases, relative to the working directory: still found, with a note on
# how to move them (see legacy_path_notes).
LEGACY_REGISTRY = Path(".router/registry")
LEGACY_LOG = Path(".router/traffic.sqlite3")


def data_dir() -> Path:
    """Where the traffic log and the model registry live unless configured otherwise."""
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return Path(base) / "hybrid-router"


def default_log_path() -> Path:
    return data_dir() / "traffic.sqlite3"


def default_registry_path() -> Path:
    return data_dir() / "registry"


def default_cache_path() -> Path:
    return data_dir() / "cache"


def default_classifier_registry_path() -> Path:
    """Where `router categories apply` and `router classifiers` look when no registry is configured.

    The router follows a classifier registry only when ``classifier.registry_path`` names it.
    """
    return data_dir() / "classifiers"


def legacy_path_notes(log_path: Path, registry_path: Path, *, cwd: Path | None = None) -> list[str]:
    """How to move a log or registry left at an earlier release's default path, if one is there."""
    cwd = cwd or Path.cwd()
    notes = []
    for label, old, new in (("traffic log", LEGACY_LOG, log_path), ("model registry", LEGACY_REGISTRY, registry_path)):
        found = cwd / old
        if found.exists() and not Path(new).exists() and found.resolve() != Path(new).resolve():
            notes.append(
                f"a {label} is at the old default path {found}, not at {new}; move it with: "
                f"mkdir -p '{Path(new).parent}' && mv '{found}' '{new}'"
            )
    return notes


def __getattr__(name: str) -> Any:
    if name == "DEFAULT_REGISTRY":  # the former constant; the default now lives in the data directory
        return default_registry_path()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class LocalConfig(_Section):
    """The in-process tier (or a self-hosted endpoint serving the same role)."""

    backend: str = Field("llama_cpp", description="Local backend registry key: 'llama_cpp' or 'openai_compatible'.")
    model_path: Path | None = Field(None, description="GGUF file; default: the packaged Gemma 3 270M Q4_K_M.")
    model_name: str | None = Field(None, description="Model name reported in responses; default: the file stem.")
    adapter_path: Path | None = Field(None, description="GGUF LoRA adapter applied on top of the model.")
    adapter_version: str | None = Field(None, description="Version label of the adapter, recorded in the log.")
    registry_path: Path | None = Field(
        default_factory=default_registry_path,
        description="Model registry written by `router retrain` (default: in the data directory); the local tier "
        "serves its promoted adapter and switches to a new promotion without a restart. Left at its default it is "
        "not followed when adapter_path is set (an explicit adapter pins the model); None never follows one.",
    )
    registry_poll_s: float = Field(1.0, gt=0, description="Seconds between checks of the registry for a new promotion.")
    n_ctx: int = Field(2048, ge=128, le=131072, description="Context window in tokens.")
    history: Literal["full", "topic"] = Field(
        "topic",
        description="What the local model sees of a conversation's later turn: 'topic', the system prompt and the "
        "user turns of the current topic joined into one question (for small models trained on single questions, "
        "which replay their own earlier answer: on the conversation benchmark it served 56 % of follow-ups locally at "
        "similarity 0.81, against 40 % at 0.72 with 'full'); 'full', every message (a model that reads history well).",
    )
    long_conversations: Literal["prune", "cloud"] = Field(
        "prune",
        description="A conversation longer than n_ctx: 'prune' answers it locally from the system prompt and the "
        "most recent turns that fit (hybrid_common.pruning); 'cloud' sends it to the cloud whole, as before. A private or "
        "model='local' conversation is always pruned, never refused for its length: only when even the system prompt "
        "and the end of its last message cannot fit is it refused (400 context_length_exceeded). A non-private one "
        "whose last message alone is too long goes to the cloud rather than being cut.",
    )
    summary_chars: int = Field(
        0, ge=0, le=2000,
        description="When pruning, quote the dropped user turns in a system note of at most this many characters "
        "(extractive, no model call; kept only if it still fits). 0: no note.",
    )  # fmt: skip
    n_threads: int | None = Field(
        None, ge=1,
        description="Generation threads; default: all cores for the batched context (max_sequences > 1; a step serves "
        "every sequence and compute bounds it), all cores but one for one-sequence workers (left for classification and I/O).",
    )
    n_batch: int = Field(256, ge=8, description="Prompt-processing batch size.")
    max_tokens: int = Field(256, ge=1, description="Upper bound on tokens generated locally per request.")
    default_max_tokens: int = Field(160, ge=1, description="Tokens generated when the request sets no limit.")
    timeout_s: float = Field(30.0, gt=0, description="Per-request deadline, queueing included.")
    workers: int = Field(
        1, ge=1, le=64,
        description="llama.cpp contexts, each owned by one worker thread. More than one only pays with cores to spare "
        "(each decode wants n_threads cores); every context holds its own KV cache.",
    )  # fmt: skip
    max_sequences: int = Field(
        16, ge=1, le=64,
        description="Sequences decoded together in one llama.cpp batch (continuous batching: a request joins at the "
        "next step and leaves when done). One decode step reads the weights once for all of them, so 16 decode at "
        "about 3x the aggregate speed of one on 2 cores. 1: the one-sequence worker pool (local.workers contexts).",
    )  # fmt: skip
    kv_tokens: int | None = Field(
        None, ge=128,
        description="KV cells the batch shares (a sequence takes its prompt plus max_tokens, not n_ctx); "
        "default max_sequences x n_ctx. A request that does not fit waits for cells to free.",
    )  # fmt: skip
    prefill_chunk: int = Field(
        128, ge=8,
        description="Prompt tokens prefilled per decode step beside the decoding sequences, so a long prompt delays "
        "the others by one chunk at a time rather than by its whole prefill.",
    )  # fmt: skip
    prefix_cache: int = Field(
        4, ge=0, le=32,
        description="Recent prompts kept in the KV memory; a new prompt starting the same way (a long system prompt, "
        "an earlier turn) copies their cells instead of prefilling them again. 0: off.",
    )  # fmt: skip
    prefix_min_tokens: int = Field(32, ge=1, description="Shortest shared prompt start worth caching and reusing.")
    batch_pad_multiple: int = Field(
        4, ge=0, le=64,
        description="Round a decode step of more than this many sequences up to a multiple of it with dummy rows: "
        "CPU kernels work on tiles of rows, and 8 sequences decode faster than 6. 0 or 1: no padding.",
    )  # fmt: skip
    flash_attention: bool = Field(
        False,
        description="llama.cpp flash attention in the batched context: about 15 % faster at 16 sequences here, but "
        "it rounds differently from the one-sequence path the evaluation gate scores (greedy answers differ on near "
        "ties), so it is off unless you evaluate with it.",
    )  # fmt: skip
    latency_budget_s: float | None = Field(
        None, gt=0,
        description="A routed request goes local only while its predicted local completion (its wait, its prefill and "
        "max_tokens steps at the batch size it would join) fits this many seconds; otherwise the cloud answers now "
        "(reason 'local_busy'). None: the cloud route's rolling median latency, clamped to the floor and cap below. "
        "Private and model='local' requests never spill: they queue up to max_queue, then get a 503.",
    )  # fmt: skip
    latency_budget_floor_s: float = Field(1.0, gt=0, description="Lowest derived latency budget.")
    latency_budget_cap_s: float = Field(
        10.0, gt=0, description="Highest derived latency budget; also the budget until the cloud has answered anything."
    )
    max_queue: int = Field(
        16, ge=0,
        description="Local requests that may wait for a worker. A request beyond that is refused at once: it goes to "
        "the cloud where allowed, else gets 503 'overloaded' with Retry-After, never a silent wait.",
    )  # fmt: skip
    max_queue_wait_s: float | None = Field(
        5.0, gt=0,
        description="Also refuse at once when the local work already queued would take longer than this (queued "
        "requests x the recent time of one answer); None: only max_queue bounds the wait.",
    )  # fmt: skip
    hang_grace_s: float = Field(
        10.0, gt=0, description="A worker still busy this long past a request's deadline is replaced with a fresh context."
    )
    retry_after_s: float = Field(1.0, gt=0, description="Retry-After given with a local 'overloaded' refusal.")
    degenerate_min_span: int = Field(48, ge=8, description="Characters of exact repetition that mark an answer degenerate.")
    reject_echo: bool = Field(True, description="Treat an answer that opens by repeating the question as degenerate.")
    stream_hold_back_chars: int = Field(
        48,
        ge=0,
        description="A local stream that may still fall back sends nothing until its answer is this many characters "
        "longer than the question, so a degenerate start (an echo) is answered by the cloud instead. 0 still holds "
        "the question's length; stream_hold = false holds nothing.",
    )
    stream_hold: bool = Field(
        True,
        description="False: a routed local stream is not held at all; its first token goes out as soon as it is "
        "generated (measured on 2 cores: 0.2x a small cloud model's first token, against 0.4-0.6x held). An echo "
        "or a loop the guard finds later then cuts the stream (the caller keeps the text before it; the log says "
        "why) instead of being answered by the cloud unseen: the trade between first-token latency and the fallback.",
    )  # fmt: skip
    stream_release_when_settled: bool = Field(
        True,
        description="End that hold as soon as the guard has ruled out an echo of the question or an earlier turn "
        "(the opening so far cannot become one, usually a few words in) instead of at stream_hold_back_chars: the "
        "echo is caught all the same and the first token comes sooner; a loop that starts later cuts the stream "
        "rather than falling back to the cloud. When the caller gave numbers (an order number, an amount) the hold "
        "lasts until the answer's first sentence has ended (at most twice the usual hold), where a miscopied one "
        "appears, so it still falls back unseen. False: always hold stream_hold_back_chars.",
    )  # fmt: skip
    stream_release_when_opening_differs: bool = Field(
        True,
        description="With stream_release_when_settled, end the hold sooner: at the answer's first word unless its first "
        "two words are the question's (or an earlier turn's) own, since a small model's echo starts where its source "
        "starts (all but 4 of the packaged base model's 507 echoes to Bitext, Banking77 and HWU64 questions did). The "
        "rare echo that opens otherwise, and a good answer that restates a short question (\"We offer shipments to "
        "Toronto\": 4 of 1,000 Bitext references), then cut the stream instead of falling back. False: wait until no "
        "echo is possible at all.",
    )  # fmt: skip
    base_url: str | None = Field(None, description="openai_compatible backend: the endpoint, e.g. http://host:8000/v1.")
    api_key: SecretStr | None = Field(None, description="openai_compatible backend: its API key, if it wants one.")
    remote_model: str | None = Field(None, description="openai_compatible backend: the model name to request.")
    remote_adapter_model: str | None = Field(
        None,
        description="openai_compatible backend: follow the model registry and request its promoted version by name, "
        "this template with {version} filled in (e.g. 'support-{version}'), the way vLLM and llama.cpp servers "
        "name LoRA adapters; the base version is requested as remote_model. Promotion and rollback switch the name "
        "at the next request. None: always remote_model.",
    )  # fmt: skip

    @field_validator("remote_adapter_model")
    @classmethod
    def _has_version_slot(cls, template: str | None) -> str | None:
        if template is not None and "{version}" not in template:
            raise ValueError("remote_adapter_model must contain {version}, e.g. 'support-{version}'")
        return template

    @property
    def followed_registry(self) -> Path | None:
        """The registry whose promoted version the local tier serves, if any."""
        if self.registry_path is None:
            return None
        if self.adapter_path is not None and "registry_path" not in self.model_fields_set:
            return None
        return self.registry_path

    def answer_tokens(self, requested: int | None = None) -> int:
        """Tokens to generate for a request asking for ``requested`` (serving and evaluation alike)."""
        return min(requested or self.default_max_tokens, self.max_tokens)

    def hold_back_for(self, question: str) -> int:
        """Characters a fallible local stream holds back before its first chunk (capped for huge prompts); 0 unheld."""
        if not self.stream_hold:
            return 0
        return min(2000, self.stream_hold_back_chars + len(question))

    def new_guard(self, question: str, earlier: Sequence[str] = ()) -> DegenerationGuard:
        """The degeneration guard for one answer to ``question`` (after the conversation's ``earlier`` turns), as configured."""
        return DegenerationGuard(
            question=question, earlier=earlier, min_span=self.degenerate_min_span, reject_echo=self.reject_echo
        )


class ModelRoute(_Section):
    """How a requested model name reaches the cloud (any litellm model string and endpoint)."""

    litellm_model: str = Field(..., description="litellm model string, e.g. 'openai/gpt-4o' or 'anthropic/claude-3-5-haiku'.")
    api_base: str | None = Field(None, description="Endpoint override (self-hosted or loopback stand-in).")
    api_key: SecretStr | None = Field(None, description="API key; prefer api_key_env.")
    api_key_env: str | None = Field(None, description="Environment variable holding the API key.")
    pricing_model: str | None = Field(None, description="litellm model name whose prices estimate this route's cost.")
    always_cloud: bool = Field(False, description="Pin: requests naming this model always go to the cloud.")
    extra_params: tuple[str, ...] = Field(
        (), description="Provider parameters a request may set for this route beyond OpenAI's (e.g. 'top_k'); sent in "
        "the provider's request body. Endpoints, keys, retries and litellm's own options can never be allowed.",
    )  # fmt: skip

    @field_validator("extra_params")
    @classmethod
    def _no_control_keys(cls, names: tuple[str, ...]) -> tuple[str, ...]:
        for name in names:
            if not name.isidentifier():
                raise ValueError(f"extra_params: {name!r} is not a parameter name")
            if name in LITELLM_CONTROL_KEYS or name.startswith(("api_", "litellm_")):
                raise ValueError(f"extra_params: {name!r} is a transport or credential setting; configure it on the route instead")
        return names

    @property
    def price_as(self) -> str:
        """The litellm model name whose prices this route's cost is estimated at."""
        return self.pricing_model or self.litellm_model

    def resolved_api_key(self) -> str | None:
        if self.api_key is not None:
            return self.api_key.get_secret_value()
        if self.api_key_env:
            return os.environ.get(self.api_key_env)
        return None


class CloudConfig(_Section):
    """The cloud tier, reached through litellm."""

    default_model: str = Field("gpt-4o-mini", description="Model used for model='auto' (a name in [models] or a litellm string).")
    api_base: str | None = Field(None, description="Endpoint for routes that set none (Client(base_url=...) sets it).")
    api_key: SecretStr | None = Field(None, description="API key for routes that set none (Client(api_key=...) sets it).")
    timeout_s: float = Field(
        60.0, gt=0,
        description="Per-attempt timeout (a caller's own, shorter timeout replaces it; a longer one does not). A Retry-After that would end later "
        "than this many seconds after the first attempt is not waited for: the error is raised at once.",
    )  # fmt: skip
    max_retries: int = Field(2, ge=0, le=10, description="Retries on connection errors, timeouts, 429 and 5xx.")
    backoff_initial_s: float = Field(0.5, ge=0, description="First back-off; doubles each retry (used when the provider sends no Retry-After).")
    backoff_max_s: float = Field(8.0, ge=0, description="Back-off ceiling.")
    retry_after_max_s: float = Field(
        30.0, ge=0,
        description="Longest Retry-After (or retry-after-ms) from a 429/5xx that is honoured; a longer one ends the "
        "retries at once, so the caller (or the local fallback) is not kept waiting.",
    )  # fmt: skip
    breaker_failures: int = Field(
        5, ge=1,
        description="Consecutive retryable failures (connection errors, timeouts, 429, 5xx; each attempt counts) "
        "of one route (litellm model + api_base) that open its circuit: calls then fail fast without a request.",
    )  # fmt: skip
    breaker_reset_s: float = Field(
        30.0, gt=0,
        description="How long an open circuit stays open; then one trial call goes through, and closes it on success "
        "or opens it again on failure.",
    )  # fmt: skip
    drop_unsupported_params: bool = Field(True, description="Let litellm drop parameters a provider does not accept.")
    any_model: bool = Field(
        False, description="Let a request name any litellm model string. Off: 'auto', 'local', names in [models], "
        "default_model and bare model names ('gpt-4o'); a provider-prefixed string ('ollama/...') is a 404, so a "
        "caller cannot choose the provider and its endpoint.",
    )  # fmt: skip
    fallback_to_local: bool = Field(True, description="Serve locally when the cloud fails and the local tier can.")
    preimport: bool = Field(True, description="Import litellm in the background at client start (it takes seconds).")
    litellm_chunk_logging: bool = Field(
        False,
        description="Let litellm run its logging for every streamed chunk (a worker-thread task with a new event loop "
        "per chunk: most of the CPU a streamed cloud answer costs the router's process). Off by default, because the "
        "router writes its own log of each request; off sets litellm.disable_streaming_logging, which is process-wide. "
        "litellm's sync success callbacks still see each finished stream; turn this on for async litellm callbacks of "
        "your own that must see streamed calls.",
    )  # fmt: skip


class ClassifierConfig(_Section):
    """Where the query classifier artifact lives: one fixed directory, or a registry's promoted version."""

    path: Path | None = Field(None, description="Classifier artifact directory; without one every 'auto' query is an edge case.")
    registry_path: Path | None = Field(
        None,
        description="Follow this classifier registry's serving version (`router classifiers`); a promotion or "
        "rollback is picked up without a restart. Excludes path.",
    )
    registry_poll_s: float = Field(1.0, gt=0, description="Seconds between checks of the classifier registry.")
    threshold: float | None = Field(None, ge=0, le=1, description="Override the artifact's calibrated edge threshold.")
    threads: int | None = Field(
        None, ge=1, description="ONNX threads per classification; default min(2, cores), non-spinning."
    )

    @model_validator(mode="after")
    def _one_source(self) -> ClassifierConfig:
        if self.path is not None and self.registry_path is not None:
            raise ValueError(
                "classifier.path and classifier.registry_path are mutually exclusive: set path to serve one fixed "
                "artifact, or registry_path to serve whatever version the registry promotes"
            )
        return self


class RoutingConfig(_Section):
    """Which queries the local tier serves and which may never leave the machine."""

    local_categories: list[str] | Literal["*"] = Field(
        default_factory=list, description="Categories served locally ('*' = every known category)."
    )
    private_categories: list[str] = Field(default_factory=list, description="Categories that never go to the cloud.")
    pii_patterns: dict[str, str] = Field(
        default_factory=lambda: dict(DEFAULT_PII_PATTERNS), description="Named regexes; a match keeps the query local."
    )
    route_named_models: bool = Field(
        True, description="Route requests that name a cloud model (e.g. 'gpt-4o'); False sends them straight to it."
    )
    max_input_chars: int = Field(200_000, ge=1, description="Requests longer than this are rejected with a 400.")
    max_user_turns: int = Field(
        256, ge=1,
        description="Requests with more user turns are rejected with a 400 (too_many_turns): every user turn is "
        "classified, turns not seen before in one encoder call, so this bounds the work one request can cause.",
    )  # fmt: skip

    @field_validator("pii_patterns")
    @classmethod
    def _patterns_compile(cls, patterns: dict[str, str]) -> dict[str, str]:
        return validate_patterns(patterns)


class ConversationConfig(_Section):
    """How a turn is routed in its conversation (see :mod:`router._conversation`)."""

    follow_ups: Literal["inherit", "last_message"] = Field(
        "inherit",
        description="'inherit': a context-dependent follow-up ('ok do it', 'the one from last month') takes its "
        "conversation's category; 'last_message': every turn is classified alone (the behaviour before).",
    )
    switch_confidence: float = Field(
        0.9, ge=0.0, le=1.01,
        description="A context-dependent turn the classifier alone gives another category with at least this "
        "confidence is read as a switch of topic (1.01: never; follow-ups always inherit).",
    )  # fmt: skip
    followup_detector: Path | None = Field(
        None,
        description="A learned follow-up detector (router.FollowUpDetector .npz, trained for the classifier's encoder, "
        "e.g. by `make eval-followup-writers`): a turn it reads as a follow-up is context-dependent too, beside the "
        "word rule. Used only with a classifier whose encoder SHA-256 matches the one it was trained on.",
    )
    followup_threshold: float | None = Field(
        None, gt=0.0, le=1.0, description="Follow-up probability from which the detector calls a turn a follow-up (None: its own)."
    )
    sticky_cloud: bool = Field(
        True,
        description="Once the cloud answered a turn the local tier could not serve, follow-ups of that topic stay in "
        "the cloud, so the voice a user hears does not change turn by turn. Recognised from the conversation itself "
        "(the earlier answer's fingerprint), so no session id is needed; private turns still never leave.",
    )
    sticky_memory: int = Field(
        100_000, ge=0, description="Cloud answers remembered for sticky_cloud (fingerprints, about 100 bytes each)."
    )


class QualityConfig(_Section):
    """When a category may be answered locally: evidence floors, hysteresis, overrides (router.quality)."""

    enabled: bool = Field(True, description="Gate local answers on evidence; off serves local categories unchecked.")
    min_similarity: float = Field(0.75, ge=0, le=1, description="Floor on mean similarity of local answers to the reference.")
    max_degenerate_rate: float = Field(0.05, ge=0, le=1, description="Ceiling on the share of degenerate local answers.")
    min_samples: int = Field(30, ge=1, description="Evaluated or live samples a category needs before it can open.")
    margin: float = Field(0.02, ge=0, le=0.5, description="Hysteresis: open above floor + margin, close below floor - margin.")
    live_window: int = Field(
        200, ge=1, description="Live samples (shadow, audit) and votes (feedback, one per response) kept per category and version."
    )
    min_votes: int = Field(20, ge=1, description="Votes (feedback on distinct responses) before they count for a category.")
    min_vote_acceptance: float = Field(
        0.6, ge=0, le=1, description="Floor on the mean vote (accepted = 1, rejected = 0, or a score): below it a category closes."
    )
    votes_can_open: bool = Field(
        False, description="Let votes open a category that has fewer than min_samples scored samples (off: votes only close)."
    )
    feedback_from: Literal["caller", "anyone"] = Field(
        "caller",
        description="Who may post feedback on an answer: 'caller', the one who received it (same API key over HTTP, "
        "else the same 'user'), or an operator; 'anyone' who knows the response id.",
    )
    overrides: dict[str, Literal["trust", "distrust"]] = Field(
        default_factory=dict, description="Decide a category by hand: 'trust' opens it, 'distrust' closes it."
    )
    private_unproven: Literal["answer_locally", "handoff"] = Field(
        "answer_locally",
        description="A private category the local model is not proven for: answer locally (flagged in the response "
        "and the log) or return handoff_message instead.",
    )
    handoff_message: str = Field(
        "I can't answer this one automatically. A member of our team will get back to you.",
        description="The answer given to private requests the local model is not proven for (private_unproven = "
        "'handoff'), and to private requests whose local answer the guard rejects (private_degenerate = 'handoff').",
    )
    private_degenerate: Literal["handoff", "serve_flagged"] = Field(
        "handoff",
        description="A private request whose local answer the degeneration guard rejects (an echo, a loop): give "
        "handoff_message (reason private_handoff), or serve the text before the problem, flagged (the old way).",
    )
    evidence_dir: Path = Field(
        default_factory=lambda: data_dir() / "evidence",
        description="Where `router evaluate` records per-category evidence for models and adapters outside a registry.",
    )
    shadow_rate: float = Field(
        0.1,
        ge=0,
        le=1,
        description="Share of cloud answers in gated-off local categories the local tier also answers in the background "
        "(only while it is idle), scored against the cloud's answer: live evidence that can open the category.",
    )
    audit_rate: float = Field(
        0.02,
        ge=0,
        le=1,
        description="Share of local answers (never private or forced ones) also sent to the cloud in the background and "
        "scored the same way, so an open category keeps being measured. Each audit is a paid cloud call.",
    )
    sample_queue: int = Field(32, ge=1, description="Shadow and audit jobs waiting at most; more are dropped, never queued.")
    sample_max_age_s: float = Field(
        120.0, gt=0, description="A job not started within this many seconds (a busy router) is dropped."
    )
    idle_s: float = Field(
        0.25, ge=0, description="How long the local tier must have been idle before a shadow answer starts."
    )
    scorer_path: Path | None = Field(
        None,
        description="The encoder that scores shadow and audit pairs: the 'encoder' directory of a classifier artifact "
        "fitted with fine_tune_epochs=0 (the encoder the offline evidence used, in this library's ONNX serving graph). "
        "Default: the classifier's own encoder when it is not fine-tuned.",
    )


class CanaryConfig(_Section):
    """How a running router judges a canary (a new version serving a share of local traffic; router.canary).

    The share and the version come from the registry (``router models promote vN --canary 0.1`` or
    ``[retrain] canary_share``); these settings say how the evidence decides. Both arms are audited
    at the same rate; the decision is a group-sequential test with Bonferroni spending over a bounded
    number of looks, so its error rates hold however often it looks.
    """

    decide: bool = Field(True, description="End canaries on their live evidence (promote or roll back); off: only by hand.")
    audit_rate: float = Field(
        0.25, ge=0, le=1,
        description="While a canary runs, the share of local answers (both arms, same rate) audited against the cloud. "
        "Each audit is a paid cloud call; the canary ends sooner the higher it is.",
    )  # fmt: skip
    margin: float = Field(
        0.03, gt=0, le=0.5,
        description="Non-inferiority margin: the canary is promoted once its mean audit score is shown to be no more "
        "than this below the serving version's (score = similarity to the cloud's answer; 0 for a degenerate answer).",
    )  # fmt: skip
    alpha: float = Field(
        0.05, gt=0, lt=0.5,
        description="Error rate of each decision: a canary as good as the serving version is rolled back with at most "
        "this probability (split between the score and guard tests), and one worse by the margin is promoted with at most this.",
    )  # fmt: skip
    look_every: int = Field(10, ge=1, description="Canary audits between two looks of the score test (and 2x this many canary answers for the guard test).")
    min_audits: int = Field(20, ge=2, description="Canary audits before the first look.")
    max_audits: int = Field(1000, ge=2, description="Canary audits at most: an undecided canary is rolled back here (bounds the looks).")
    max_requests: int = Field(
        10_000, ge=1, description="Canary answers at most: an undecided canary is rolled back here (bounds the guard test's looks)."
    )
    max_hours: float = Field(72.0, gt=0, description="An undecided canary older than this is rolled back.")


class LogConfig(_Section):
    """The traffic log every request is written to."""

    enabled: bool = Field(True, description="Write the traffic log.")
    path: Path = Field(
        default_factory=default_log_path, description="SQLite database file (default: in the data directory)."
    )
    url: SecretStr | None = Field(
        None,
        description="postgresql://user:password@host:5432/db: keep the log in PostgreSQL, shared by every router "
        "process (needs psycopg). log.path then only names the local spool. Prefer ROUTER_LOG__URL to a file.",
    )
    store_messages: bool = Field(True, description="Store message and answer text (needed for retraining).")
    redact_pii: bool = Field(False, description="Replace PII pattern matches with [NAME] before storing.")
    spool: bool = Field(
        True,
        description="A row the database refuses (locked, disk full) is fsynced to '<path>.spool' before the response "
        "returns and written to the log later; off: such rows are counted and dropped.",
    )
    busy_timeout_s: float = Field(5.0, ge=0, description="How long a write waits for a locked database before spooling.")
    retain_days: float | None = Field(
        None, gt=0,
        description="Delete requests older than this many days (checked hourly, in batches); `router stats` keeps "
        "counting them. Default: keep everything.",
    )  # fmt: skip
    synchronous: Literal["normal", "full"] = Field(
        "normal",
        description="SQLite durability: 'normal' (WAL) keeps every committed row through a crash of the process; "
        "'full' also through a power cut, at the cost of an fsync per request.",
    )

    @property
    def location(self) -> str | Path:
        """What the log is opened from: the PostgreSQL URL when set, else the SQLite path."""
        return self.url.get_secret_value() if self.url is not None else self.path

    @property
    def spool_path(self) -> Path | None:
        """The local spool of a PostgreSQL log (a SQLite log keeps it beside its file)."""
        return self.path.with_name(self.path.name + ".spool") if self.url is not None else None

    @field_validator("url")
    @classmethod
    def _postgres_url(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and not value.get_secret_value().startswith(("postgresql://", "postgres://")):
            raise ValueError("log.url must be a postgresql:// URL (a SQLite log is set with log.path)")
        return value


class CategoryCacheConfig(_Section):
    """Per-category overrides of the ``[cache]`` settings (``[cache.categories.NAME]``)."""

    enabled: bool | None = Field(None, description="Cache this category's answers (default: the [cache] setting).")
    similarity: float | None = Field(None, ge=0, le=1, description="Semantic threshold for this category.")
    ttl_s: float | None = Field(None, gt=0, description="Seconds an answer of this category stays servable.")
    deterministic_only: bool | None = Field(
        None, description="Only cache and serve requests with temperature 0 (or unset and a seed)."
    )


class CacheConfig(_Section):
    """The response cache: repeated questions answered from disk, before any model runs.

    Off by default: a drop-in client must not start repeating answers unasked. ``enabled = true``
    turns it on with the defaults below.
    """

    enabled: bool = Field(False, description="Answer repeated questions from the cache.")
    path: Path = Field(default_factory=default_cache_path, description="The diskcache directory (shared by processes).")
    mode: Literal["exact", "semantic", "exact_then_semantic"] = Field(
        "exact_then_semantic",
        description="exact: the same normalised request; semantic: a single-turn question whose embedding is close "
        "to a cached one in the same category and scope; exact_then_semantic: exact first, then semantic.",
    )
    similarity: float = Field(
        0.94, ge=0, le=1,
        description="Cosine (classifier encoder) a semantic hit needs. Chosen on Bitext for >= 99% of hits answering "
        "the same intent (evals/README.md, 'Response cache').",
    )  # fmt: skip
    ttl_s: float = Field(7 * 86400.0, gt=0, description="Seconds an answer stays servable.")
    size_limit_mb: float = Field(512, gt=0, description="Disk budget; the least recently used entries are evicted beyond it.")
    max_index_entries: int = Field(
        100_000, ge=1,
        description="Question vectors each process holds in memory for semantic lookups, across partitions; the least "
        "recently used partitions are dropped beyond it (a semantic miss, never a wrong answer).",
    )  # fmt: skip
    scope: str = Field(
        "user",
        description="What partitions the cache so one end user's answers never reach another: 'user' (the OpenAI "
        "'user' field; requests without one share the anonymous scope), 'metadata:KEY' (a metadata value) or "
        "'global' (one scope).",
    )
    semantic_multi_turn: bool = Field(
        False, description="Also serve semantic hits to conversations with earlier turns (exact hits always are)."
    )
    cache_private: bool = Field(
        False,
        description="Also cache private categories and PII matches. Entries then live only in this directory, "
        "which must be as protected as the traffic log (they never leave the machine either way).",
    )
    deterministic_only: bool = Field(False, description="Only cache requests with temperature 0 (per category too).")
    categories: dict[str, CategoryCacheConfig] = Field(default_factory=dict, description="Per-category overrides.")

    @field_validator("scope")
    @classmethod
    def _scope(cls, value: str) -> str:
        if value not in ("user", "global") and not (value.startswith("metadata:") and len(value) > len("metadata:")):
            raise ValueError("cache.scope must be 'user', 'global' or 'metadata:KEY'")
        return value

    def for_category(self, category: str | None) -> tuple[bool, float, float, bool]:
        """(enabled, similarity, ttl_s, deterministic_only) for ``category``, overrides applied."""
        o = self.categories.get(category or "") or CategoryCacheConfig()
        return (
            self.enabled if o.enabled is None else o.enabled,
            self.similarity if o.similarity is None else o.similarity,
            self.ttl_s if o.ttl_s is None else o.ttl_s,
            self.deterministic_only if o.deterministic_only is None else o.deterministic_only,
        )


class ServerConfig(_Section):
    """``router serve``: the same routing behind an OpenAI-compatible HTTP API."""

    host: str = Field("127.0.0.1", description="Interface to bind: loopback unless told otherwise.")
    port: int = Field(8000, ge=0, le=65535, description="TCP port (0: any free port).")
    api_keys: list[SecretStr] = Field(
        default_factory=list,
        description="Bearer tokens a caller must present (Authorization: Bearer ...); empty: no authentication. "
        "Set them with ROUTER_SERVER__API_KEYS='[\"...\"]' rather than in a file you commit.",
    )
    operator_keys: list[SecretStr] = Field(
        default_factory=list,
        description="Bearer tokens of operators: accepted wherever api_keys are, and they may also post feedback on "
        "any response (a caller's key only on the answers it received).",
    )
    max_body_bytes: int = Field(1_048_576, ge=1024, description="Larger request bodies are refused with a 413.")
    max_concurrency: int = Field(
        32, ge=1,
        description="Requests handled at once, each holding one worker thread. Local generation is bounded by "
        "local.max_queue on its own, so this mostly bounds threads waiting on the cloud.",
    )  # fmt: skip
    max_waiting: int = Field(
        64, ge=0, description="Requests waiting for a free slot; beyond this a request gets 503 'overloaded' at once."
    )
    retry_after_s: int = Field(1, ge=1, description="Retry-After sent with a 503 'overloaded'.")
    drain_s: float = Field(30.0, ge=0, description="On SIGTERM, how long requests in flight may take to finish.")


# The TOML file for the config being built; a ContextVar keeps from_toml free of global state.
_toml_file: ContextVar[Path | None] = ContextVar("_toml_file", default=None)


class _TomlSource(PydanticBaseSettingsSource):
    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:  # pragma: no cover - unused
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        path = _toml_file.get()
        if path is None:
            return {}
        try:
            with open(path, "rb") as fh:
                data = tomllib.load(fh)
            return data
        except FileNotFoundError as err:
            raise ConfigError(f"config file not found: {path}") from err
        except tomllib.TOMLDecodeError as err:
            raise ConfigError(f"config file {path} is not valid TOML: {err}") from err


class RouterConfig(BaseSettings):
    """Everything the router needs; every field has a working offline default."""

    model_config = SettingsConfigDict(
        env_prefix="ROUTER_", env_nested_delimiter="__", extra="forbid", frozen=True
    )

    local: LocalConfig = Field(default_factory=LocalConfig)
    cloud: CloudConfig = Field(default_factory=CloudConfig)
    classifier: ClassifierConfig = Field(default_factory=ClassifierConfig)
    routing: RoutingConfig = Field(default_factory=RoutingConfig)
    conversation: ConversationConfig = Field(default_factory=ConversationConfig)
    log: LogConfig = Field(default_factory=LogConfig)
    quality: QualityConfig = Field(default_factory=QualityConfig)
    canary: CanaryConfig = Field(default_factory=CanaryConfig)
    server: ServerConfig = Field(default_factory=ServerConfig)
    cache: CacheConfig = Field(default_factory=CacheConfig)
    models: dict[str, ModelRoute] = Field(default_factory=dict, description="Requested model name → cloud route.")
    retrain: dict[str, Any] = Field(
        default_factory=dict,
        description="The [retrain] table: settings of `router retrain`, validated by finetune.RetrainConfig.",
    )
    discover: dict[str, Any] = Field(
        default_factory=dict,
        description="The [discover] table: settings of `router discover`, validated by classifiers.discovery.DiscoveryConfig.",
    )
    warmup: Literal["lazy", "background", "eager"] = Field(
        "background", description="When models load: on first use, in a background thread at start, or before returning."
    )

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return init_settings, env_settings, _TomlSource(settings_cls)

    @classmethod
    def from_toml(cls, path: str | os.PathLike[str], **overrides: Any) -> RouterConfig:
        """Load a TOML file (environment and ``overrides`` take precedence)."""
        token = _toml_file.set(Path(path))
        try:
            return _validated(cls, overrides, source=str(path))
        finally:
            _toml_file.reset(token)

    def requestable(self, model: str) -> bool:
        """Whether a request may name ``model``: 'auto', 'local', a [models] name, the default, a bare
        model name (``gpt-4o``: unchanged OpenAI code keeps working), or anything with cloud.any_model.

        A provider-prefixed string (``ollama/…``, ``openai/…``) that is not configured is refused:
        it would let the caller choose the provider and its endpoint.
        """
        if self.cloud.any_model or model in ("auto", "local", self.cloud.default_model) or model in self.models:
            return True
        return "/" not in model and ":" not in model

    def extra_params_for(self, model: str) -> frozenset[str]:
        """The provider parameters a request naming ``model`` may set: its route's ``extra_params``."""
        name = self.cloud.default_model if model in ("auto", "local") else model
        return frozenset(self.route_for(name).extra_params)

    def route_for(self, model: str) -> ModelRoute:
        """The cloud route for a requested model name; unknown names pass to litellm as they are."""
        if model in self.models:
            return self.models[model]
        return ModelRoute(litellm_model=model)


def _validated(cls: type[RouterConfig], values: dict[str, Any], *, source: str) -> RouterConfig:
    try:
        return cls(**values)
    except ValidationError as err:
        problems = "\n".join(
            f"  {'.'.join(str(p) for p in e['loc']) or '(root)'}: {e['msg']}" for e in err.errors()
        )
        raise ConfigError(f"invalid configuration ({source}):\n{problems}") from err


def load_config(path: str | os.PathLike[str] | None = None, **overrides: Any) -> RouterConfig:
    """The configuration from ``path``, else ``$ROUTER_CONFIG``, else environment and defaults."""
    path = path or os.environ.get("ROUTER_CONFIG")
    if path:
        return RouterConfig.from_toml(path, **overrides)
    return _validated(RouterConfig, overrides, source="environment")
