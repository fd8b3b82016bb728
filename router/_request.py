"""Validate ``chat.completions.create`` arguments once, into a normalised :class:`ChatRequest`.

The checks mirror what the OpenAI API rejects with a 400, so a malformed request fails here with
the same error class and ``param`` an application already handles, before anything is routed or
logged.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import httpx
import openai

from hybrid_common.chat import last_user_text, message_text
from hybrid_common.errors import BadRequestError

__all__ = ["OPENAI_CHAT_PARAMETERS", "SDK_OPTIONS", "ChatRequest", "GenerationParams", "build_request"]

_ROLES = frozenset({"system", "developer", "user", "assistant", "tool", "function"})
_TEXT_ROLES = frozenset({"system", "developer", "user", "assistant"})
_NOT_GIVEN_TYPES = tuple(t for t in (getattr(openai, "NotGiven", None), getattr(openai, "Omit", None)) if t)


def _typed_dict_keys(*types: Any) -> frozenset[str]:
    return frozenset(k for t in types for k in (*t.__required_keys__, *t.__optional_keys__))


def _openai_chat_parameters() -> frozenset[str]:
    """The body parameters of a chat completion, as the installed ``openai`` SDK types them.

    The allow-list of what a request may set: read from the SDK so a parameter OpenAI adds is
    accepted without a release of ours, while every keyword litellm reads from the same
    ``**kwargs`` for itself (``api_base``, ``api_key``, ``mock_response``, callbacks, retries ...)
    stays out, whatever litellm release adds next.
    """
    from openai.types.chat import completion_create_params

    return _typed_dict_keys(completion_create_params.CompletionCreateParamsBase) | {"stream"}


def _openai_message_keys() -> frozenset[str]:
    """Keys a chat message may carry: every ``ChatCompletionMessageParam`` shape, plus the fields of a
    response's own ``ChatCompletionMessage`` (apps pass an answer back into the history as it came)."""
    import typing

    from openai.types.chat import ChatCompletionMessage, ChatCompletionMessageParam

    return _typed_dict_keys(*typing.get_args(ChatCompletionMessageParam)) | frozenset(ChatCompletionMessage.model_fields)


OPENAI_CHAT_PARAMETERS = _openai_chat_parameters()
"""What a request body may hold (plus a route's ``extra_params`` and the router's own ``cache``)."""
SDK_OPTIONS = frozenset({"extra_headers", "extra_query", "extra_body", "timeout"})
"""``create`` keywords of the Python SDK that are not body parameters: accepted from :class:`router.Client`
only (headers and query are the SDK's HTTP transport, never forwarded; ``extra_body`` is checked key by key)."""
_ROUTER_PARAMETERS = frozenset({"cache"})
_MESSAGE_KEYS = _openai_message_keys()

# Parameters the local tier honours; any other supplied parameter is passed to the cloud and,
# if it changes the answer's shape, makes the request cloud-only (see _local_blockers).
_CLOUD_ONLY_FEATURES = {
    "tools": "tools",
    "functions": "function calling",
    "tool_choice": "tool_choice",
    "function_call": "function calling",
    "logprobs": "logprobs",
    "top_logprobs": "logprobs",
    "logit_bias": "logit_bias",
    "audio": "audio output",
    "prediction": "predicted outputs",
    "web_search_options": "web search",
}


@dataclass(frozen=True)
class GenerationParams:
    """Sampling controls shared by every backend."""

    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    stop: tuple[str, ...] = ()
    seed: int | None = None
    frequency_penalty: float | None = None
    presence_penalty: float | None = None


@dataclass(frozen=True)
class ChatRequest:
    """A validated request: everything routing, backends and the log need."""

    model: str
    messages: list[dict[str, Any]]
    params: GenerationParams
    stream: bool = False
    include_usage: bool = False
    n: int = 1
    user: str | None = None
    metadata: dict[str, str] | None = None
    timeout_s: float | None = None
    max_retries: int | None = None
    cloud_extra: dict[str, Any] = field(default_factory=dict)
    """Allow-listed OpenAI parameters the router does not read itself (``tools``, ``response_format`` ...), for the cloud."""
    provider_extra: dict[str, Any] = field(default_factory=dict)
    """Parameters the route's ``extra_params`` allows, sent in the provider's request body (litellm ``extra_body``)."""
    local_blockers: tuple[str, ...] = ()
    cache: bool = True
    """False when the caller opted out of the response cache (``extra_body={"cache": False}``)."""
    caller: str | None = None
    """Who sent it over HTTP (``router serve``: a fingerprint of the API key); None in-process. Set by
    the server, never from the request's own fields."""

    @property
    def query(self) -> str:
        """The text to classify: the last user message."""
        return last_user_text(self.messages)


def _given(value: Any) -> bool:
    return value is not None and not (_NOT_GIVEN_TYPES and isinstance(value, _NOT_GIVEN_TYPES))


def _bad(message: str, param: str, code: str | None = None) -> BadRequestError:
    return BadRequestError(message, param=param, code=code)


def _number(value: Any, name: str, low: float, high: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise _bad(f"Invalid type for '{name}': expected a number, got {type(value).__name__}.", name, "invalid_type")
    if not low <= value <= high:
        raise _bad(f"Invalid '{name}': {value} is outside [{low}, {high}].", name, "invalid_value")
    return float(value)


def _integer(value: Any, name: str, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise _bad(f"Invalid type for '{name}': expected an integer, got {type(value).__name__}.", name, "invalid_type")
    if value < low:
        raise _bad(f"Invalid '{name}': {value} is less than the minimum of {low}.", name, "invalid_value")
    return value


def _messages(raw: Any) -> tuple[list[dict[str, Any]], list[str]]:
    """Check the messages list; also return reasons the local tier cannot serve them."""
    if not isinstance(raw, (list, tuple)):
        raise _bad(f"Invalid type for 'messages': expected an array, got {type(raw).__name__}.", "messages", "invalid_type")
    if not raw:
        raise _bad("Invalid 'messages': empty array. Expected an array with minimum length 1.", "messages", "empty_array")
    messages: list[dict[str, Any]] = []
    blockers: list[str] = []
    for i, message in enumerate(raw):
        where = f"messages[{i}]"
        if hasattr(message, "model_dump"):  # openai SDK message objects, e.g. a previous response's message
            message = message.model_dump(exclude_none=True)
        if not isinstance(message, Mapping):
            raise _bad(f"Invalid type for '{where}': expected an object, got {type(message).__name__}.", where, "invalid_type")
        unknown = sorted(str(k) for k in message if k not in _MESSAGE_KEYS)
        if unknown:
            raise _bad(f"Unrecognized key in '{where}': {unknown[0]!r}.", f"{where}.{unknown[0]}", "unknown_parameter")
        role = message.get("role")
        if not isinstance(role, str) or role not in _ROLES:  # a list or dict role is unhashable: check the type first
            raise _bad(
                f"Invalid value for '{where}.role': {role!r}. Supported values are: {', '.join(sorted(_ROLES))}.",
                f"{where}.role",
                "invalid_value",
            )
        content = message.get("content")
        if role not in _TEXT_ROLES:
            blockers.append(f"{role} messages")
        if isinstance(content, str):
            pass
        elif content is None:
            if role != "assistant" or not message.get("tool_calls"):
                if role in {"user", "system", "developer"}:
                    raise _bad(f"Invalid '{where}.content': a {role} message needs content.", f"{where}.content", "missing_content")
        elif isinstance(content, (list, tuple)):
            for j, part in enumerate(content):
                part_where = f"{where}.content[{j}]"
                if not isinstance(part, Mapping) or not isinstance(part.get("type"), str):
                    raise _bad(f"Invalid '{part_where}': expected a content part object with a 'type'.", part_where, "invalid_type")
                if part["type"] == "text":
                    if not isinstance(part.get("text"), str):
                        raise _bad(f"Invalid '{part_where}.text': expected a string.", f"{part_where}.text", "invalid_type")
                else:
                    blockers.append(f"{part['type']} content")
        else:
            raise _bad(
                f"Invalid type for '{where}.content': expected a string or an array of content parts, got {type(content).__name__}.",
                f"{where}.content",
                "invalid_type",
            )
        if message.get("tool_calls"):
            blockers.append("tool calls in history")
        messages.append(dict(message))
    return messages, blockers


def _stop(raw: Any) -> tuple[str, ...]:
    if isinstance(raw, str):
        return (raw,)
    if isinstance(raw, (list, tuple)) and all(isinstance(s, str) for s in raw) and len(raw) <= 4:
        return tuple(raw)
    raise _bad("Invalid 'stop': expected a string or an array of at most 4 strings.", "stop", "invalid_type")


def _timeout(raw: Any) -> float | None:
    if isinstance(raw, httpx.Timeout):
        values = [v for v in (raw.read, raw.connect, raw.write, raw.pool) if v is not None]
        return max(values) if values else None
    return _number(raw, "timeout", 0.0, math.inf) if raw is not None else None


def _unencodable(value: Any, where: str, depth: int = 0) -> str | None:
    """Where in ``value`` a string holds a lone surrogate (valid JSON, not valid Unicode text), if anywhere."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return where
        return None
    if depth > 32:
        return None
    if isinstance(value, Mapping):
        items: Any = ((f"{where}.{k}", v) for k, v in value.items())
    elif isinstance(value, (list, tuple)):
        items = ((f"{where}[{i}]", v) for i, v in enumerate(value))
    else:
        return None
    for inner_where, inner in items:
        if (found := _unencodable(inner, inner_where, depth + 1)) is not None:
            return found
    return None


def _allowed_arguments(kwargs: Mapping[str, Any], extra_params: frozenset[str]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The given arguments, ``extra_body`` merged in as the SDK merges it into the JSON body, and the
    ones a route's ``extra_params`` allows apart; any other name is a 400 naming it."""
    args = {k: v for k, v in kwargs.items() if _given(v)}
    extra_body = args.pop("extra_body", None)
    if extra_body is not None:
        if not isinstance(extra_body, Mapping):
            raise _bad("Invalid type for 'extra_body': expected an object.", "extra_body", "invalid_type")
        args.update({k: v for k, v in extra_body.items() if _given(v)})
        body_keys: set[Any] = set(extra_body)
    else:
        body_keys = set()
    provider: dict[str, Any] = {}
    for name in list(args):
        in_body = name in body_keys
        if name in OPENAI_CHAT_PARAMETERS or name in _ROUTER_PARAMETERS or (name in SDK_OPTIONS and not in_body):
            continue
        if isinstance(name, str) and name in extra_params:
            provider[name] = args.pop(name)
            continue
        shown = name if isinstance(name, str) else repr(name)
        raise _bad(
            f"Unrecognized request argument supplied: {shown}. Endpoints, credentials, retries and provider options "
            "come from the router's configuration, never from a request ([models.NAME] extra_params allows more).",
            str(shown),
            "unknown_parameter",
        )
    for transport in ("extra_headers", "extra_query"):
        args.pop(transport, None)  # the SDK's HTTP transport options: litellm's transport is configured, not requested
    return args, provider


def build_request(
    arguments: Mapping[str, Any] | None = None,
    /,
    *,
    max_input_chars: int,
    max_user_turns: int | None = None,
    max_retries: int | None = None,
    extra_params: frozenset[str] = frozenset(),
    caller: str | None = None,
    **kwargs: Any,
) -> ChatRequest:
    """Validate ``create`` keyword arguments into a :class:`ChatRequest` or raise a 400.

    Only OpenAI chat-completion parameters (and ``extra_params``, the names the route's
    configuration allows) are accepted: a request is untrusted input, and litellm reads its own
    control keywords (endpoints, keys, mock answers) from the same keyword arguments.
    """
    args, provider_extra = _allowed_arguments({**(arguments or {}), **kwargs}, extra_params)
    for name, value in (*args.items(), *provider_extra.items()):
        # A lone surrogate ("\ud800") is valid JSON but no tokenizer, log or provider can take it.
        if (where := _unencodable(value, name)) is not None:
            raise _bad(f"Invalid '{where}': the text is not valid Unicode (a lone surrogate).", where, "invalid_value")
    model = args.pop("model", None)
    if not isinstance(model, str) or not model.strip():
        raise _bad("Invalid 'model': expected a non-empty string.", "model", "invalid_type")
    messages, blockers = _messages(args.pop("messages", None))

    size = sum(len(message_text(m.get("content"))) for m in messages)
    if size > max_input_chars:
        raise _bad(
            f"Input is too long: {size} characters, the limit is {max_input_chars}.", "messages", "context_length_exceeded"
        )
    # Every user turn is classified (a conversation is as private as its most private turn), so the
    # number of turns bounds the encoder work one request can ask for.
    turns = sum(1 for m in messages if m.get("role") == "user")
    if max_user_turns is not None and turns > max_user_turns:
        raise _bad(f"Too many user turns: {turns}, the limit is {max_user_turns}.", "messages", "too_many_turns")

    stream = args.pop("stream", False)
    if not isinstance(stream, bool):
        raise _bad("Invalid type for 'stream': expected a boolean.", "stream", "invalid_type")
    stream_options = args.pop("stream_options", None)
    include_usage = False
    if stream_options is not None:
        if not stream:
            raise _bad("Invalid 'stream_options': only allowed when 'stream' is true.", "stream_options", "invalid_value")
        if not isinstance(stream_options, Mapping):
            raise _bad("Invalid type for 'stream_options': expected an object.", "stream_options", "invalid_type")
        include_usage = bool(stream_options.get("include_usage", False))

    max_tokens = args.pop("max_completion_tokens", None)
    legacy_max = args.pop("max_tokens", None)
    if max_tokens is None:
        max_tokens = legacy_max
    params = GenerationParams(
        max_tokens=_integer(max_tokens, "max_tokens", 1) if max_tokens is not None else None,
        temperature=_number(args.pop("temperature"), "temperature", 0.0, 2.0) if "temperature" in args else None,
        top_p=_number(args.pop("top_p"), "top_p", 0.0, 1.0) if "top_p" in args else None,
        stop=_stop(args.pop("stop")) if "stop" in args else (),
        seed=_integer(args.pop("seed"), "seed", -(2**63)) if "seed" in args else None,
        frequency_penalty=_number(args.pop("frequency_penalty"), "frequency_penalty", -2.0, 2.0)
        if "frequency_penalty" in args
        else None,
        presence_penalty=_number(args.pop("presence_penalty"), "presence_penalty", -2.0, 2.0)
        if "presence_penalty" in args
        else None,
    )
    n = _integer(args.pop("n"), "n", 1) if "n" in args else 1
    if n > 1:
        blockers.append("n > 1")

    user = args.pop("user", None)
    if user is not None and not isinstance(user, str):
        raise _bad("Invalid type for 'user': expected a string.", "user", "invalid_type")
    metadata = args.pop("metadata", None)
    if metadata is not None:
        if not isinstance(metadata, Mapping) or not all(isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()):
            raise _bad("Invalid 'metadata': expected an object of string keys and string values.", "metadata", "invalid_type")
        if len(metadata) > 16:
            raise _bad("Invalid 'metadata': at most 16 keys.", "metadata", "invalid_value")
        metadata = dict(metadata)
    timeout_s = _timeout(args.pop("timeout", None))

    response_format = args.get("response_format")
    if response_format is not None:
        if not isinstance(response_format, Mapping) or "type" not in response_format:
            raise _bad("Invalid 'response_format': expected an object with a 'type'.", "response_format", "invalid_type")
        if response_format["type"] != "text":
            blockers.append(f"response_format {response_format['type']}")
    for name, feature in _CLOUD_ONLY_FEATURES.items():
        if name in args and args[name] is not False and feature not in blockers:
            blockers.append(feature)
    cache = args.pop("cache", True)
    if not isinstance(cache, bool):
        raise _bad("Invalid type for 'cache': expected a boolean.", "cache", "invalid_type")

    return ChatRequest(
        model=model,
        messages=messages,
        params=params,
        stream=stream,
        include_usage=include_usage,
        n=n,
        user=user,
        metadata=metadata,
        timeout_s=timeout_s,
        max_retries=max_retries,
        cloud_extra=args,
        provider_extra=provider_extra,
        caller=caller,
        local_blockers=tuple(dict.fromkeys(blockers)),
        cache=cache,
    )

