"""litellm's per-call INFO lines stay out of an application's INFO log unless the user asks (router.backends.cloud)."""
from __future__ import annotations

import logging

import pytest

from router.backends import cloud


@pytest.fixture
def litellm_loggers():
    loggers = [logging.getLogger(name) for name in cloud._LITELLM_LOGGERS]
    saved = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.NOTSET)
    yield loggers
    for lg, level in zip(loggers, saved, strict=True):
        lg.setLevel(level)


def test_litellm_loggers_without_a_level_are_raised_to_warning(litellm_loggers, monkeypatch) -> None:
    monkeypatch.delenv("LITELLM_LOG", raising=False)
    logging.getLogger("LiteLLM Router").setLevel(logging.DEBUG)  # a level the user set stays
    cloud._quiet_litellm_info()
    levels = {lg.name: lg.level for lg in litellm_loggers}
    assert levels == {"LiteLLM": logging.WARNING, "LiteLLM Router": logging.DEBUG, "LiteLLM Proxy": logging.WARNING}
    assert not logging.getLogger("LiteLLM").isEnabledFor(logging.INFO)


def test_litellm_log_in_the_environment_is_the_users_choice(litellm_loggers, monkeypatch) -> None:
    monkeypatch.setenv("LITELLM_LOG", "INFO")
    cloud._quiet_litellm_info()
    assert all(lg.level == logging.NOTSET for lg in litellm_loggers)


@pytest.mark.slow
def test_importing_litellm_through_the_router_quiets_its_info_lines(monkeypatch) -> None:
    monkeypatch.delenv("LITELLM_LOG", raising=False)
    cloud._import_litellm()
    logging.getLogger("LiteLLM").setLevel(logging.NOTSET)  # as a fresh import leaves it ...
    monkeypatch.setattr(cloud, "_litellm", None)
    cloud._import_litellm()  # ... and the router's import raises it
    assert logging.getLogger("LiteLLM").level == logging.WARNING
