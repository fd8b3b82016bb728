"""The request bodies the server accepts, as JSON Schema for its OpenAPI document.

The endpoints read raw JSON and validate it with the same code as :class:`router.Client`
(one validator, one set of error messages), so these schemas describe rather than enforce. They
are what ``/openapi.json`` shows to people and to tools: client generators, and the schemathesis
run in ``tests/router/test_server_fuzz.py`` that generates requests from them.
"""

from __future__ import annotations

from typing import Any

__all__ = ["FEEDBACK_REQUEST", "chat_completion_request", "json_body"]

_TEXT_PART = {
    "type": "object",
    "required": ["type", "text"],
    "properties": {"type": {"const": "text"}, "text": {"type": "string"}},
}

_MESSAGE = {
    "type": "object",
    "required": ["role", "content"],
    "properties": {
        "role": {"enum": ["system", "developer", "user", "assistant"]},
        "content": {"oneOf": [{"type": "string"}, {"type": "array", "items": _TEXT_PART}]},
        "name": {"type": "string"},
    },
}


def chat_completion_request(models: list[str]) -> dict[str, Any]:
    """The chat-completions body; ``model`` is one of ``models`` (any other name is a 404)."""
    return {**_CHAT_COMPLETION_REQUEST, "properties": {**_CHAT_COMPLETION_REQUEST["properties"], "model": {
        "enum": models, "description": "'auto' (routed), 'local', or a model name from [models]."}}}  # fmt: skip


_CHAT_COMPLETION_REQUEST: dict[str, Any] = {
    "type": "object",
    "required": ["model", "messages"],
    "properties": {
        "messages": {"type": "array", "minItems": 1, "items": _MESSAGE},
        "max_tokens": {"type": "integer", "minimum": 1},
        "max_completion_tokens": {"type": "integer", "minimum": 1},
        "temperature": {"type": "number", "minimum": 0, "maximum": 2},
        "top_p": {"type": "number", "minimum": 0, "maximum": 1},
        "stream": {"type": "boolean"},
        "stream_options": {"type": "object", "properties": {"include_usage": {"type": "boolean"}}},
        "stop": {"oneOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}, "maxItems": 4}]},
        "seed": {"type": "integer"},
        "user": {"type": "string"},
        "metadata": {"type": "object", "additionalProperties": {"type": "string"}},
        "cache": {"type": "boolean", "description": "false: answer without the response cache (as Cache-Control: no-cache)."},
    },
}

FEEDBACK_REQUEST: dict[str, Any] = {
    "type": "object",
    "required": ["response_id"],
    "properties": {
        "response_id": {"type": "string", "minLength": 1, "description": "The id of a chat completion this server returned."},
        "score": {"type": "number", "minimum": 0, "maximum": 1},
        "accepted": {"type": "boolean"},
        "correction": {"type": "string"},
        "user": {"type": "string", "description": "The end user the answer went to (on a server without API keys)."},
    },
    "additionalProperties": False,
}


def json_body(schema: dict[str, Any]) -> dict[str, Any]:
    """``openapi_extra`` for a route that reads ``schema`` as its JSON body."""
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}}
