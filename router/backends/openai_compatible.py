"""The local tier served by a self-hosted OpenAI-compatible endpoint (vLLM, llama.cpp server, Ollama).

This is how the local tier scales past one machine without touching application code. Requests use
the plain ``/v1/completions`` endpoint with the prompt rendered by :mod:`hybrid_common.chat`, so a
fine-tuned adapter sees exactly the turn format it was trained on, whatever template the server
would otherwise apply.

With ``local.remote_adapter_model`` (e.g. ``"support-{version}"``) the backend follows the model
registry and asks for the promoted version *by name*, the way vLLM (``--enable-lora``) and
llama-cpp-python's server (one alias per adapter) serve LoRA adapters: a promotion or a rollback
changes the name sent from the next request on, with nothing to load here; requests in flight
finish on the name they started with. The server must already serve that name.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Sequence
from typing import Any

from hybrid_common.chat import STOP_SEQUENCES, render_prompt
from hybrid_common.errors import ConfigError
from router._request import GenerationParams
from router.adapter_watch import AdapterWatch, ServingAdapter
from router.canary import CanarySpec
from router.backends.base import GenerationStream, LocalBackend, LocalFailure, register_local_backend
from router.config import LocalConfig

__all__ = ["OpenAICompatibleBackend"]

# Without the server's tokenizer, count conservatively: English averages about 4 characters a
# token, so 3 over-estimates and keeps long prompts off a window they would overflow.
_CHARS_PER_TOKEN_LOW = 3


class OpenAICompatibleBackend(LocalBackend):
    """A remote server speaking the OpenAI completions API, used as the local tier."""

    name = "openai_compatible"

    def __init__(self, config: LocalConfig) -> None:
        if not config.base_url or not config.remote_model:
            raise ConfigError("local.backend = 'openai_compatible' needs local.base_url and local.remote_model")
        self._config = config
        self._client: Any = None
        self._lock = threading.Lock()
        self._watch: AdapterWatch | None = None
        self._serving: ServingAdapter | None = None
        self._read_once = False
        if config.remote_adapter_model is not None:
            if config.followed_registry is None:
                raise ConfigError("local.remote_adapter_model needs a model registry to follow (local.registry_path)")
            self._watch = AdapterWatch(config.followed_registry, poll_s=config.registry_poll_s)

    @property
    def model_name(self) -> str:
        return self._config.model_name or str(self._config.remote_model)

    @property
    def adapter_version(self) -> str | None:
        """The promoted registry version whose name requests now carry (None: not following one)."""
        return self._serving.version if self._serving is not None else None

    @property
    def canary(self) -> CanarySpec | None:
        """The registry's canary: the server is asked for it by name, like the promoted version."""
        serving = self._serving
        return serving.canary.spec if serving is not None and serving.canary is not None else None

    def served_model(self, version: str | None = None) -> str:
        """The model name a request asks the server for: the promoted version, or ``version`` when it
        is the running canary's."""
        serving = self._serving
        if serving is None:
            return str(self._config.remote_model)
        canary = serving.canary
        if canary is not None and version == canary.version:
            path, name = canary.adapter_path, canary.version
        else:
            path, name = serving.adapter_path, serving.version
        return str(self._config.remote_model) if path is None else str(self._config.remote_adapter_model).format(version=name)

    def refresh(self) -> None:
        """Pick up a promotion or rollback: a registry check at most every poll interval, no load."""
        if self._watch is None:
            return
        if not self._read_once:  # the first request reads the registry; later ones poll it (throttled)
            self._read_once = True
            state = self._watch.read()
        else:
            state = self._watch.poll()
        if state is not None and state != self._serving:
            self._watch.accept(state)
            self._serving = state

    def load(self) -> None:
        with self._lock:
            if self._client is None:
                import openai

                key = self._config.api_key.get_secret_value() if self._config.api_key else "none"
                self._client = openai.OpenAI(base_url=self._config.base_url, api_key=key, max_retries=0)

    def fits(self, messages: Sequence[dict[str, Any]], max_tokens: int) -> bool:
        return len(render_prompt(messages)) // _CHARS_PER_TOKEN_LOW + max_tokens <= self._config.n_ctx

    def generate(
        self,
        messages: Sequence[dict[str, Any]],
        params: GenerationParams,
        *,
        max_tokens: int,
        deadline: float,
        finish_by: float | None = None,  # the server batches on its own; the budget is admission's only
        version: str | None = None,
    ) -> GenerationStream:
        self.load()
        self.refresh()
        canary = self.canary
        if canary is None or version != canary.version:
            version = self.adapter_version
        model = self.served_model(version)
        stream = GenerationStream(pieces=iter(()), adapter_version=version)
        stream.pieces = self._pieces(stream, model, render_prompt(messages), params, max_tokens, deadline)
        return stream

    def _pieces(
        self, stream: GenerationStream, model: str, prompt: str, params: GenerationParams, max_tokens: int, deadline: float
    ) -> Iterator[str]:
        import openai

        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise LocalFailure("timeout", "no time left before the request started")
        # Unset sampling options are left out, not sent as null: servers differ in how they read null.
        optional = {"seed": params.seed, "frequency_penalty": params.frequency_penalty, "presence_penalty": params.presence_penalty}
        try:
            chunks = self._client.completions.create(
                model=model,
                prompt=prompt,
                max_tokens=max_tokens,
                temperature=params.temperature if params.temperature is not None else 0.0,
                top_p=params.top_p if params.top_p is not None else 1.0,
                stop=[*STOP_SEQUENCES, *params.stop][:4],
                stream=True,
                stream_options={"include_usage": True},
                timeout=remaining,
                **{k: v for k, v in optional.items() if v is not None},
            )
        except openai.APITimeoutError as err:
            raise LocalFailure("timeout", str(err)) from err
        except openai.OpenAIError as err:
            raise LocalFailure("error", f"{type(err).__name__}: {err}") from err
        pieces = 0
        try:
            for chunk in chunks:
                if chunk.usage is not None:
                    stream.prompt_tokens = chunk.usage.prompt_tokens
                    stream.completion_tokens = chunk.usage.completion_tokens
                if time.monotonic() > deadline:
                    raise LocalFailure("timeout", "the endpoint passed the request's deadline")
                for choice in chunk.choices:
                    if choice.text:
                        pieces += 1
                        yield choice.text
                    if choice.finish_reason:
                        stream.finish_reason = choice.finish_reason
        except openai.OpenAIError as err:
            raise LocalFailure("error", f"{type(err).__name__}: {err}") from err
        finally:
            chunks.close()
        if stream.completion_tokens == 0 and pieces:
            # Some servers (llama.cpp's among them) send no usage when streaming: each streamed
            # piece is one token there, and the prompt is estimated at 4 characters a token.
            stream.completion_tokens = pieces
            stream.prompt_tokens = -(-len(prompt) // 4)

    def close(self) -> None:
        with self._lock:
            if self._client is not None:
                self._client.close()
                self._client = None


register_local_backend(OpenAICompatibleBackend.name, OpenAICompatibleBackend)
