"""``router categories apply``: reviewed clusters become a served classifier version, with no label
read from the data set; the router follows it without a restart, private categories never leave,
rollback returns to the previous version, and the next retrain sees the new categories."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from classifiers import EmbeddingClassifier
from classifiers.discovery import ProposalError, ProposalStore, set_status
from finetune.categories import apply_categories, rename, set_private
from finetune.classifier_registry import ClassifierRegistry
from finetune.datasets import examples_from_log
from finetune.discovery import discover
from router import Client
from tests.finetune.test_discovery import rows, write_log  # noqa: F401 - the module's Bitext rows fixture

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def applied(rows, classifier_path: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:  # noqa: F811
    work = tmp_path_factory.mktemp("apply")
    log = work / "traffic.sqlite3"
    truth = write_log(log, rows)
    run = discover(log, work / "categories", classifier_path=classifier_path, progress=False, auto=True)
    newsletter = next(c.name for c in run.proposal.accepted if "newsletter" in " ".join(c.keywords))
    set_private(run.store, [newsletter])
    result = apply_categories(run.store.root, log, work / "classifiers")
    return {"work": work, "log": log, "truth": truth, "store": run.store, "result": result, "private": newsletter}


def test_apply_registers_and_promotes_a_classifier_of_the_accepted_categories(applied: dict[str, Any]) -> None:
    registry = ClassifierRegistry(applied["work"] / "classifiers")
    serving = registry.serving(verify=True)
    assert serving is not None and serving.version == applied["result"].version == "v0001"
    accepted = [c.name for c in applied["store"].load().accepted]
    assert sorted(serving.categories) == sorted(accepted)
    assert serving.private_categories == [applied["private"]]
    classifier = EmbeddingClassifier.load(registry.artifact_path(serving.version))
    assert sorted(classifier.classes_) == sorted(accepted)


def test_the_next_retrain_sees_the_new_categories_on_old_traffic(applied: dict[str, Any]) -> None:
    registry = ClassifierRegistry(applied["work"] / "classifiers")
    predict = EmbeddingClassifier.load(registry.artifact_path("v0001")).predict
    examples = examples_from_log(applied["log"], label_unlabelled=predict)
    labelled = [e for e in examples if e.category is not None]
    assert len(labelled) >= 0.7 * len(examples)
    # Each discovered category stands for one Bitext category (checked here, never used to build it).
    truth = applied["truth"]
    by_category: dict[str, Counter[str]] = {}
    for e in labelled:
        by_category.setdefault(e.category, Counter())[truth[e.source.removeprefix("log:")]] += 1
    for counts in by_category.values():
        assert counts.most_common(1)[0][1] / sum(counts.values()) >= 0.9


def test_a_running_router_follows_apply_and_rollback_and_private_categories_stay(
    applied: dict[str, Any], make_config: Callable[..., Any]
) -> None:
    root = applied["work"] / "classifiers"
    config = make_config(
        classifier={"path": None, "registry_path": root, "registry_poll_s": 0.05},
        routing={"local_categories": [], "private_categories": []},
        quality={"private_unproven": "handoff", "overrides": {}, "shadow_rate": 0.0, "audit_rate": 0.0},
    )
    private_query = [{"role": "user", "content": "I want to subscribe to your newsletter"}]
    with Client(config) as client:
        r = client.chat.completions.create(model="gpt-4o", messages=private_query)
        assert r.router.classifier_version == "v0001"
        assert r.router.category == applied["private"]
        assert r.router.tier == "handoff" and r.router.reason.value == "private_handoff"  # never left the machine
        # A rename re-applied is v0002; a rollback returns to v0001 in the running router.
        rename(applied["store"], applied["private"], "NEWS")
        apply_categories(applied["store"].root, applied["log"], root)
        registry = ClassifierRegistry(root)
        for expected, category in (("v0002", "NEWS"), ("v0001", applied["private"])):
            if expected == "v0001":
                registry.rollback(reason="test")
            for _ in range(400):
                r = client.chat.completions.create(model="gpt-4o", messages=private_query)
                if r.router.classifier_version == expected:
                    break
                client._engine._followed.wait(5)  # let the background load finish
            assert r.router.classifier_version == expected and r.router.category == category
            assert r.router.reason.value == "private_handoff"


def test_apply_without_two_accepted_categories_changes_nothing(applied: dict[str, Any], tmp_path: Path) -> None:
    import shutil

    store = ProposalStore(shutil.copytree(applied["store"].root, tmp_path / "categories"))
    store.edit(lambda p, v: set_status(p, [c.name for c in p.accepted][1:], "rejected"))
    with pytest.raises(ProposalError, match="accept at least two categories"):
        apply_categories(store.root, applied["log"], tmp_path / "classifiers")
    assert not (tmp_path / "classifiers" / "serving.json").exists()


def test_the_cloud_names_a_cluster_through_litellm(make_config: Callable[..., Any]) -> None:
    from finetune.discovery import cloud_namer

    name = cloud_namer(make_config())(["where is my refund", "refund status please", "has my refund been sent"])
    assert isinstance(name, str) and name.strip()  # the stand-in cloud's answer, via the real litellm call
