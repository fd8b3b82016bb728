"""The package surface: exports, lazy imports, the error tree."""

from __future__ import annotations

import json
import subprocess
import sys

import openai
import pytest

import router
from router import errors

HEAVY = ["torch", "transformers", "sentence_transformers", "llama_cpp", "litellm", "peft", "sklearn"]


def _modules_after(code: str) -> list[str]:
    script = f"{code}\nimport sys, json\nprint(json.dumps(sorted(m for m in {HEAVY!r} if m in sys.modules)))"
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_import_router_loads_no_heavy_module() -> None:
    assert _modules_after("import router") == []


def test_client_import_and_construction_load_no_model_runtime(tmp_path) -> None:
    code = (
        "from router import Client, RouterConfig\n"
        f"c = Client(RouterConfig(warmup='lazy', log={{'path': r'{tmp_path / 'log.db'}'}}))"
    )
    assert _modules_after(code) == []


def test_exports_match_all() -> None:
    from tests.exports import check_lazy_exports

    check_lazy_exports(router, extra={"__version__"})
    with pytest.raises(AttributeError):
        router.NoSuchThing  # noqa: B018


def test_names_moved_to_hybrid_common_stay_importable_where_they_were() -> None:
    """The error tree, file helpers and chat template now live in hybrid_common; router re-exports the same objects."""
    import hybrid_common.chat
    import hybrid_common.errors
    import hybrid_common.files
    import hybrid_common.pii
    from router import chat_template, files

    for old, new in ((errors, hybrid_common.errors), (files, hybrid_common.files), (chat_template, hybrid_common.chat)):
        assert old.__all__ == new.__all__
        assert all(getattr(old, name) is getattr(new, name) for name in new.__all__)
    from router.config import DEFAULT_PII_PATTERNS, DEFAULT_REGISTRY, default_registry_path
    from router.policy import luhn_valid

    assert DEFAULT_REGISTRY == default_registry_path() and luhn_valid("4111111111111111")
    assert DEFAULT_PII_PATTERNS is hybrid_common.pii.DEFAULT_PII_PATTERNS


def test_errors_are_openai_errors_too() -> None:
    err = errors.BadRequestError("bad", param="messages", code="empty_array")
    assert isinstance(err, openai.BadRequestError) and isinstance(err, errors.RouterError)
    assert err.status_code == 400 and err.param == "messages" and err.code == "empty_array"
    assert isinstance(errors.APITimeoutError(), openai.APITimeoutError)
    assert isinstance(errors.PrivacyError("no"), openai.PermissionDeniedError)
    assert errors.PrivacyError("no").status_code == 403


def test_from_openai_error_keeps_status() -> None:
    import httpx

    response = httpx.Response(429, request=httpx.Request("POST", "http://x"))
    translated = errors.from_openai_error(openai.RateLimitError("slow down", response=response, body=None))
    assert isinstance(translated, errors.RateLimitError) and "slow down" in str(translated)
    assert isinstance(errors.from_openai_error(RuntimeError("boom")), errors.InternalServerError)
