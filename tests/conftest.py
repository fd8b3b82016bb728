"""Session-wide fixtures: the loopback stand-in cloud, a classifier trained on Bitext, router configs.

Everything here is real: llama.cpp runs the packaged GGUF, the stand-in cloud is llama-cpp-python's
OpenAI-compatible server on 127.0.0.1 reached through litellm, the log is SQLite.
"""

from __future__ import annotations

import contextlib
import csv
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# The default traffic log and model registry live in the data directory: point it at a throwaway
# one so no test reads, or writes to, the developer's own (subprocesses inherit it).
_DATA_HOME = tempfile.TemporaryDirectory(prefix="router-tests-data-")
os.environ["XDG_DATA_HOME"] = _DATA_HOME.name

DATASETS = Path(__file__).resolve().parents[2] / "shared" / "datasets"
BITEXT_CSV = DATASETS / "bitext_customer_support" / "Bitext_Sample_Customer_Support_Training_Dataset.csv"

# The categories the test router serves locally, keeps private, and sends to the cloud.
LOCAL_CATEGORIES = ["ORDER", "SHIPPING", "DELIVERY"]
PRIVATE_CATEGORIES = ["PAYMENT"]
CLOUD_CATEGORIES = ["FEEDBACK"]


def bitext_rows() -> list[dict[str, str]]:
    with BITEXT_CSV.open(newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


@pytest.fixture(scope="session")
def standin() -> Iterator[Any]:
    from evals.standin_cloud import StandinCloud

    with StandinCloud(n_threads=1) as cloud:
        yield cloud


@pytest.fixture(scope="session")
def classifier_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A frozen-encoder classifier over five Bitext categories, saved as an artifact."""
    from classifiers import EmbeddingClassifier

    known = LOCAL_CATEGORIES + PRIVATE_CATEGORIES + CLOUD_CATEGORIES
    rows = [r for r in bitext_rows() if r["category"] in known]
    train = [r for i, r in enumerate(rows) if i % 4 != 0][:600]
    clf = EmbeddingClassifier(fine_tune_epochs=0).fit([r["instruction"] for r in train], [r["category"] for r in train])
    path = tmp_path_factory.mktemp("classifier") / "artifact"
    clf.save(path)
    return path


@pytest.fixture
def make_config(standin: Any, classifier_path: Path, tmp_path: Path) -> Callable[..., Any]:
    """Build a RouterConfig pointing at the stand-in cloud; keyword sections override the defaults."""
    from router import RouterConfig

    def build(**sections: Any) -> Any:
        base: dict[str, Any] = {
            "models": {
                "gpt-4o": {
                    "litellm_model": standin.litellm_model,
                    "api_base": standin.api_base,
                    "api_key": "sk-test-not-a-real-key-000000",
                    "pricing_model": "gpt-4o",
                },
                "pinned-cloud": {"litellm_model": standin.litellm_model, "api_base": standin.api_base, "always_cloud": True},
            },
            "cloud": {"default_model": "gpt-4o", "backoff_initial_s": 0.0, "max_retries": 1},
            "classifier": {"path": classifier_path},
            "routing": {"local_categories": LOCAL_CATEGORIES, "private_categories": PRIVATE_CATEGORIES},
            # The untuned model has no evidence: routing tests trust their categories by hand (an
            # operator override), so they exercise routing; the gate itself is tested on its own.
            # Shadow and audit answers are off unless a test turns them on (tests/router/test_sampling*).
            "quality": {"overrides": dict.fromkeys(LOCAL_CATEGORIES + PRIVATE_CATEGORIES, "trust"), "shadow_rate": 0.0, "audit_rate": 0.0},
            # The packaged model is a *base* model; echo/loop fallbacks are tested on their own.
            "local": {"reject_echo": False, "degenerate_min_span": 4000, "n_threads": 1},
            "log": {"path": tmp_path / "traffic.sqlite3"},
            "warmup": "lazy",
        }
        for key, value in sections.items():
            if isinstance(value, dict) and isinstance(base.get(key), dict):
                base[key] = {**base[key], **value}
            else:
                base[key] = value
        return RouterConfig(**base)

    return build


@pytest.fixture
def client(make_config: Callable[..., Any]) -> Iterator[Any]:
    from router import Client

    with Client(make_config()) as c:
        yield c


def user(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


def settle_local_swap(client: Any, timeout_s: float = 60.0) -> None:
    """Let a promotion or rollback the registry just made land in the local tier.

    The local tier loads a new version off the request path and swaps it in between jobs, so
    the request that notices a promotion is still served by the old version; tests that assert
    on the very next request wait for the swap first (after the poll interval has passed).
    """
    local = client._engine.local
    local.refresh()
    local.wait_for_swap(timeout_s)


# ---------------------------------------------------------------------------- PostgreSQL

_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def pg_server() -> str:
    """A PostgreSQL server: the one ``ROUTER_TEST_POSTGRES_URL`` names, else the throwaway cluster
    ``.ci/start-postgres`` starts (as the postgres user; it refuses root). Never a skip."""
    import subprocess

    url = os.environ.get("ROUTER_TEST_POSTGRES_URL")
    if url:
        return url
    done = subprocess.run([str(_ROOT / ".ci" / "start-postgres")], check=False, capture_output=True, text=True)
    assert done.returncode == 0, f"no PostgreSQL server for the log tests: {done.stderr.strip()}"
    return done.stdout.strip().splitlines()[-1]


@pytest.fixture
def pg_url(pg_server: str) -> Iterator[str]:
    """A fresh database on :func:`pg_server` for one test, dropped after it."""
    import uuid

    import psycopg

    name = f"router_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(pg_server, autocommit=True) as admin:
        admin.execute(f"CREATE DATABASE {name}")
    yield pg_server.rsplit("/", 1)[0] + "/" + name
    with psycopg.connect(pg_server, autocommit=True) as admin:
        admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@contextlib.contextmanager
def serving(client: Any, **options: Any) -> Iterator[str]:
    """``router serve`` for ``client`` in a thread on a free loopback port; yields its base URL."""
    import threading
    import time

    from router.server import build_server

    server = build_server(client, port=0, log_level="warning", **options)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 60
        while not server.started:
            assert time.monotonic() < deadline, "server did not start"
            time.sleep(0.02)
        yield f"http://127.0.0.1:{server.servers[0].sockets[0].getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(timeout=60)
