"""What a local backend is, and the registry that picks one from config.

A backend turns rendered messages into a stream of text pieces. Deadlines, the degeneration guard
and fallback live in the engine, so every backend gets them for free.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from hybrid_common.errors import ConfigError
from router._request import GenerationParams
from router.config import LocalConfig

if TYPE_CHECKING:
    from router.canary import CanarySpec

__all__ = [
    "GenerationParams",
    "GenerationStream",
    "LocalBackend",
    "LocalFailure",
    "available_local_backends",
    "create_local_backend",
    "register_local_backend",
]


class LocalFailure(Exception):
    """The local tier could not produce an acceptable answer; ``kind`` says why (internal)."""

    def __init__(self, kind: str, detail: str) -> None:
        super().__init__(f"{kind}: {detail}")
        self.kind = kind
        self.detail = detail


@dataclass
class GenerationStream:
    """Text pieces from a backend; usage and finish reason are filled in when it ends."""

    pieces: Iterator[str]
    prompt_tokens: int = 0
    completion_tokens: int = 0
    finish_reason: str = "stop"
    adapter_version: str | None = None
    """The adapter version that actually produced the text, when the backend knows it (set at the end)."""

    def __iter__(self) -> Iterator[str]:
        return self.pieces

    def close(self) -> None:
        close = getattr(self.pieces, "close", None)
        if close is not None:
            close()


class LocalBackend(abc.ABC):
    """One way of running the local tier; owns its native resources until ``close``."""

    name: str

    @property
    @abc.abstractmethod
    def model_name(self) -> str:
        """The model name reported in responses."""

    @abc.abstractmethod
    def load(self) -> None:
        """Load weights or connect; idempotent and thread-safe."""

    @abc.abstractmethod
    def fits(self, messages: Sequence[dict[str, Any]], max_tokens: int) -> bool:
        """Whether the prompt plus ``max_tokens`` fits the model's context window."""

    @abc.abstractmethod
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
        """Start generating; raise :class:`LocalFailure` (kind ``timeout``) past ``deadline``, kind
        ``overloaded`` at once when the backend cannot take more work now. ``finish_by`` (monotonic):
        the latency budget the request was admitted under, which a batching backend protects.
        ``version``: the registry version that should answer (the running canary's, see
        :attr:`canary`); None or any other: the serving one. The stream's ``adapter_version`` says
        which one did."""

    def predicted_seconds(self, prompt_tokens: int, max_tokens: int, *, ahead: int = 0) -> float | None:
        """How long a request submitted now, behind ``ahead`` admitted requests not yet submitted,
        would take to finish here (None: no estimate yet; the request is then admitted).
        Latency-aware admission compares it with the budget."""
        return None

    def idle_seconds(self, prompt_tokens: int, max_tokens: int) -> float | None:
        """What the request would take here with nothing else running (None: no estimate)."""
        return None

    @property
    def adapter_version(self) -> str | None:
        """Registry version of the adapter now serving, for backends that follow a registry."""
        return None

    @property
    def canary(self) -> CanarySpec | None:
        """The canary this backend can serve now beside :attr:`adapter_version` (loaded and verified;
        None: no canary, or a backend that serves one version at a time)."""
        return None

    def refresh(self) -> None:
        """Pick up a newly promoted adapter; called before each local request, must be cheap."""

    def close(self) -> None:
        """Release native resources."""

    def __enter__(self) -> LocalBackend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


_REGISTRY: dict[str, Callable[[LocalConfig], LocalBackend]] = {}


def register_local_backend(name: str, factory: Callable[[LocalConfig], LocalBackend]) -> None:
    """Make ``local.backend = name`` in config build a backend with ``factory(config)``."""
    _REGISTRY[name] = factory


def available_local_backends() -> list[str]:
    return sorted(_REGISTRY)


def create_local_backend(config: LocalConfig) -> LocalBackend:
    """Build the backend named by ``config.backend``."""
    try:
        factory = _REGISTRY[config.backend]
    except KeyError:
        raise ConfigError(
            f"unknown local backend {config.backend!r}; registered: {', '.join(available_local_backends())}"
        ) from None
    return factory(config)
