"""Hot reload of the classifier: a running router follows the classifier registry's promotions.

The versions are real artifacts that differ in their class names (``B-ORDER`` vs ``ORDER``), so
an answer's category says which version classified it. Every category is private and unproven,
so the router answers with the hand-off message: no model generates and no cloud is called.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from finetune.classifier_registry import ClassifierRegistry
from hybrid_common.errors import ConfigError
from router import Client, RouterConfig
from router.classifier_watch import ClassifierWatch
from router.config import load_config
from tests.finetune.conftest import write_classifier_variant

POLL_S = 0.05
CLASSES = ["DELIVERY", "FEEDBACK", "ORDER", "PAYMENT"]
QUERY = [{"role": "user", "content": "I want to change the delivery address of my order"}]


@pytest.fixture(scope="module")
def registry_root(classifier_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """v0001: the classes as fitted; v0002: the same classifier, classes renamed ``B-…``; v0003: like v0001."""
    work = tmp_path_factory.mktemp("classifier-registry")
    registry = ClassifierRegistry(work / "registry")
    registry.add(write_classifier_variant(classifier_path, work / "a"), categories=CLASSES, source="test", move=True)
    b = write_classifier_variant(classifier_path, work / "b", prefix="B-")
    registry.add(b, categories=[f"B-{c}" for c in CLASSES], source="test", move=True)
    registry.add(write_classifier_variant(classifier_path, work / "c"), categories=CLASSES, source="test", move=True)
    return registry.root


@pytest.fixture
def registry(registry_root: Path, tmp_path: Path) -> ClassifierRegistry:
    """A fresh copy of the module's registry with nothing promoted (tests tamper with theirs)."""
    import shutil

    return ClassifierRegistry(shutil.copytree(registry_root, tmp_path / "registry"))


def config(tmp_path: Path, registry: ClassifierRegistry) -> RouterConfig:
    return RouterConfig(
        classifier={"registry_path": registry.root, "registry_poll_s": POLL_S, "threads": 1},
        routing={"private_categories": CLASSES + [f"B-{c}" for c in CLASSES]},
        quality={"private_unproven": "handoff", "shadow_rate": 0.0, "audit_rate": 0.0},
        local={"registry_path": None},
        cloud={"preimport": False},
        log={"path": tmp_path / "traffic.sqlite3"},
        warmup="lazy",
    )


def ask(client: Client) -> tuple[str | None, str | None]:
    completion = client.chat.completions.create(model="auto", messages=QUERY)
    return completion.router.category, completion.router.classifier_version


def wait_for(predicate: Callable[[], bool], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(POLL_S)


def ask_until_logged(client: Client, caplog: pytest.LogCaptureFixture, text: str) -> None:
    """Keep sending requests (each may poll the registry) until ``text`` is logged."""
    deadline = time.monotonic() + 60.0
    while text not in caplog.text:
        assert time.monotonic() < deadline, f"never logged: {text}"
        ask(client)
        time.sleep(POLL_S)


@pytest.fixture
def client(tmp_path: Path, registry: ClassifierRegistry) -> Iterator[Client]:
    registry.promote("v0001")
    with Client(config(tmp_path, registry)) as c:
        yield c


def test_a_running_client_follows_a_promotion_and_a_rollback(
    client: Client, registry: ClassifierRegistry, caplog: pytest.LogCaptureFixture
) -> None:
    category, version = ask(client)
    assert version == "v0001" and category in CLASSES

    with caplog.at_level(logging.INFO, logger="router"):
        registry.promote("v0002")
        wait_for(lambda: ask(client)[1] == "v0002")
    assert ask(client) == (f"B-{category}", "v0002")
    assert "now serving version v0002 (was v0001)" in caplog.text

    registry.rollback()
    wait_for(lambda: ask(client)[1] == "v0001")
    assert ask(client) == (category, "v0001")


def test_a_tampered_promotion_is_refused_and_the_old_classifier_keeps_serving(
    client: Client, registry: ClassifierRegistry, caplog: pytest.LogCaptureFixture
) -> None:
    category, _ = ask(client)
    with caplog.at_level(logging.WARNING, logger="router"):
        # A data file changed after promotion: the manifest still matches, the load's checksums do not.
        registry.promote("v0002")
        head = registry.artifact_path("v0002") / "head.npz"
        head.write_bytes(head.read_bytes()[:-8] + b"\x00" * 8)
        ask_until_logged(client, caplog, "version v0002 failed to load")
        assert ask(client) == (category, "v0001")

        # A manifest swapped after promotion: refused at the poll, before anything loads.
        registry.promote("v0003")
        manifest_file = registry.artifact_path("v0003") / "manifest.json"
        manifest = json.loads(manifest_file.read_text())
        manifest["threshold"] = 0.5
        manifest_file.write_text(json.dumps(manifest))
        ask_until_logged(client, caplog, "classifier version v0003 refused")
        assert ask(client) == (category, "v0001")
    assert "keeping the current classifier" in caplog.text


def test_nothing_promoted_means_no_classifier_until_a_promotion(tmp_path: Path, registry: ClassifierRegistry) -> None:
    from router._engine import Engine

    engine = Engine(config(tmp_path, registry))
    try:
        assert engine.classifier_and_version() == (None, None)
        registry.promote("v0002")
        wait_for(lambda: engine.classifier_and_version()[1] == "v0002")
        assert engine.classifier.classes_.tolist() == [f"B-{c}" for c in CLASSES]
    finally:
        engine.close()


def test_watch_reports_each_change_once_and_refuses_a_foreign_manifest(registry: ClassifierRegistry) -> None:
    watch = ClassifierWatch(registry.root, poll_s=0.0)
    assert watch.read() is None  # nothing promoted
    registry.promote("v0001")
    state = watch.poll()
    assert state is not None and state.version == "v0001" and state.artifact_path == registry.artifact_path("v0001")
    watch.accept(state)
    assert watch.poll() is None  # nothing changed
    # serving.json naming another version's artifact under v0002's digest: not what was promoted.
    registry.promote("v0002")
    serving = json.loads(registry.serving_path.read_text())
    serving["artifact_path"] = "versions/v0003/classifier"
    registry.serving_path.write_text(json.dumps(serving))
    assert watch.poll() is None and watch.current == state
    registry.serving_path.write_text("{not json")
    assert watch.poll() is None and watch.current == state


def test_path_and_registry_path_are_mutually_exclusive(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="mutually exclusive"):
        load_config(classifier={"path": tmp_path / "a", "registry_path": tmp_path / "r"})
    toml = tmp_path / "router.toml"
    toml.write_text(f'[classifier]\npath = "{tmp_path / "a"}"\nregistry_path = "{tmp_path / "r"}"\n')
    with pytest.raises(ConfigError, match="classifier.path and classifier.registry_path"):
        Client(toml)
