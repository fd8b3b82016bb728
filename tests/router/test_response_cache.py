"""ResponseCache and CacheTier on their own: keys, specifics, semantic lookup, invalidation, the bounded
in-memory index, the route an answer is stored under, and two processes sharing one directory."""

from __future__ import annotations

import secrets
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np

from router._cache_keys import request_key, scope_of, specifics, unsupported_specifics
from router._caching import CacheTier
from router._exchange import Exchange
from router._request import build_request
from router.cache import CachedAnswer, ResponseCache
from router.config import CacheConfig
from router.policy import Decision
from router.types import Reason


def answer(text: str, question: str, request_id: str = "r1") -> CachedAnswer:
    return CachedAnswer(text, "stop", "cloud", "m", request_id, "ORDER", question)


def unit(*values: float) -> np.ndarray:
    v = np.asarray(values, dtype=np.float32)
    return v / np.linalg.norm(v)


def test_specifics_are_numbers_addresses_placeholders_and_names() -> None:
    found = specifics("Hello, can John Smith get $30 back for order 4411? Write to jo@example.com or see {{Order Number}}.")
    assert {"30", "4411", "jo@example.com", "{{order number}}", "john", "smith"} <= found
    assert "hello" not in found and "can" not in found  # sentence openings are not names


def test_an_answer_repeating_a_specific_is_only_served_to_a_question_that_has_it() -> None:
    text = "Your refund of $30 for order 4411 is on its way."
    assert unsupported_specifics(text, "refund $30 for order 4411", "where is my refund") == ["30", "4411"]
    assert unsupported_specifics(text, "refund $30 for order 4411", "refund of $300 for order 4411") == ["30"]
    assert unsupported_specifics(text, "refund $30 for order 4411", "my $30 refund for 4411?") == []
    assert unsupported_specifics("We will refund you soon.", "refund $30 for order 4411", "where is my refund") == []
    # a long number the answer holds is specific even when its own question did not have it
    assert unsupported_specifics("Cancelling purchase 370795561790 now.", "cancel purchase 3707955617", "cancel purchase 3707955617") \
        == ["370795561790"]  # fmt: skip
    assert unsupported_specifics("Follow these 3 steps within 14 days.", "how do refunds work", "refund steps?") == []


def test_the_key_ignores_spacing_and_case_but_not_content_or_scope() -> None:
    def key(text: str, **kw: object) -> str:
        request = build_request(max_input_chars=10_000, model="auto", messages=[{"role": "user", "content": text}], **kw)
        return request_key(request, scope=scope_of(request, "user"), route="cloud:x")

    assert key("Where is my order?") == key("  where IS my   order? ")
    assert key("Where is my order?") != key("Where is my order?!")
    assert key("Where is my order?") != key("Where is my order?", user="u1")
    assert key("Where is my order?", user="u1") != key("Where is my order?", user="u2")
    assert key("Where is my order?") != key("Where is my order?", max_tokens=5)
    assert key("Where is my order?") != key("Where is my order?", seed=1)


def test_semantic_lookup_threshold_partition_and_specifics(tmp_path: Path) -> None:
    cache = ResponseCache(tmp_path / "c", size_limit_bytes=10**8)
    cache.put("k1", answer("Orders ship in two days.", "when does my order ship"), ttl_s=60, tag="cloud:x",
              partition="p", embedding=unit(1, 0, 0))  # fmt: skip
    cache.put("k2", answer("Order 4411 ships today.", "when does order 4411 ship", "r2"), ttl_s=60, tag="cloud:x",
              partition="p", embedding=unit(0, 1, 0))  # fmt: skip
    hit = cache.similar("p", unit(1, 0.2, 0), threshold=0.95, question="when will my order ship")
    assert hit is not None and hit.key == "k1" and hit.match == "semantic" and hit.similarity >= 0.95
    assert cache.similar("p", unit(1, 0.5, 0), threshold=0.95, question="x") is None  # below the threshold
    assert cache.similar("other", unit(1, 0, 0), threshold=0.5, question="x") is None  # another partition
    assert cache.similar("p", unit(0, 1, 0), threshold=0.9, question="when does my order ship") is None  # 4411 not asked
    assert cache.similar("p", unit(0, 1, 0), threshold=0.9, question="is 4411 shipping").key == "k2"


def test_invalidating_a_tag_takes_its_answers_and_their_vectors(tmp_path: Path) -> None:
    cache = ResponseCache(tmp_path / "c", size_limit_bytes=10**8)
    cache.put("old", answer("a", "q"), ttl_s=60, tag="local:registry:v1", partition="p", embedding=unit(1, 0))
    cache.put("new", answer("b", "q", "r2"), ttl_s=60, tag="local:registry:v2", partition="p", embedding=unit(0, 1))
    assert cache.invalidate("local:registry:v1") >= 2
    assert cache.get("old") is None and cache.get("new") is not None
    assert cache.similar("p", unit(1, 0), threshold=0.9, question="q") is None
    assert cache.forget("r2") and cache.get("new") is None


def test_an_expired_answer_is_not_served(tmp_path: Path) -> None:
    import time

    cache = ResponseCache(tmp_path / "c", size_limit_bytes=10**8)
    cache.put("k", answer("a", "q"), ttl_s=0.05, tag="cloud:x", partition="p", embedding=unit(1, 0))
    time.sleep(0.1)
    assert cache.get("k") is None and cache.similar("p", unit(1, 0), threshold=0.5, question="q") is None


_WRITER = textwrap.dedent(
    """
    import sys
    import numpy as np
    from router.cache import CachedAnswer, ResponseCache
    name, path = sys.argv[1], sys.argv[2]
    cache = ResponseCache(path, size_limit_bytes=10**9, timeout_s=5.0)
    for i in range(300):
        key = f"shared-{i % 50}" if i % 2 else f"{name}-{i}"
        vector = np.zeros(8, dtype=np.float32); vector[i % 8] = 1.0
        ok = cache.put(key, CachedAnswer(f"{name} answer {i}", "stop", "cloud", "m", f"{name}-r{i}", "C", f"q{i}"),
                       ttl_s=600, tag="cloud:x", partition="p", embedding=vector)
        assert ok, i
        assert cache.get(key) is not None
        cache.similar("p", vector, threshold=0.99, question=f"q{i}")
    print("done")
    """
)


def test_two_processes_share_one_cache_without_corruption(tmp_path: Path) -> None:
    path = tmp_path / "shared"
    procs = [subprocess.Popen([sys.executable, "-c", _WRITER, name, str(path)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for name in ("a", "b")]  # fmt: skip
    outputs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [err[-2000:] for _, err in outputs]
    reader = ResponseCache(path, size_limit_bytes=10**9)
    assert reader.store.check() == []  # diskcache's own consistency check: no warnings
    for name in ("a", "b"):
        for i in range(0, 300, 2):
            assert reader.get(f"{name}-{i}").answer.text == f"{name} answer {i}"
    for i in range(1, 50, 2):  # written by both processes, many times over
        assert reader.get(f"shared-{i}").answer.text.split()[0] in ("a", "b")
    assert reader.store.get("seq") == 600  # every vector numbered once, across both processes
    assert reader.similar("p", unit(*[1, 0, 0, 0, 0, 0, 0, 0]), threshold=0.99, question="q0") is not None


def test_the_size_limit_evicts_the_oldest_entries(tmp_path: Path) -> None:
    cache = ResponseCache(tmp_path / "c", size_limit_bytes=64 * 1024)
    for i in range(400):  # random hex: about 1.5 KB per answer after compression
        cache.put(f"k{i}", answer(secrets.token_hex(1500), "q", f"r{i}"), ttl_s=600, tag="cloud:x")
    assert cache.store.volume() < 400 * 1024  # far less than 400 answers' worth: culled as it grew
    assert cache.get("k399") is not None and cache.get("k0") is None  # the newest kept, the oldest gone


# -- the bounded in-memory index -----------------------------------------------------------------


class CountingStore:
    """The real diskcache, counting the question vectors read through it."""

    def __init__(self, real: object) -> None:
        self._real = real
        self.vector_reads = 0

    def __getattr__(self, name: str) -> object:
        return getattr(self._real, name)

    def get(self, key: str, *args: object, **kwargs: object) -> object:
        if key.startswith("v:"):
            self.vector_reads += 1
        return self._real.get(key, *args, **kwargs)


def _vector(i: int, dim: int = 8) -> np.ndarray:
    v = np.zeros(dim, dtype=np.float32)
    v[i % dim] = 1.0
    v[(i // dim) % dim] += 0.5
    return v / np.linalg.norm(v)


def test_the_in_memory_index_holds_at_most_max_index_entries_least_recently_used_dropped(tmp_path: Path) -> None:
    cache = ResponseCache(tmp_path / "c", size_limit_bytes=10**9, max_index_entries=100)
    for i in range(1000):
        cache.put(f"k{i}", answer(f"answer {i}", f"q{i}", f"r{i}"), ttl_s=600, tag="cloud:x",
                  partition=f"p{i}", embedding=_vector(i))  # fmt: skip
        cache.similar(f"p{i}", _vector(i), threshold=0.99, question=f"q{i}")  # reads what was just added
        if i > 900:
            assert cache.similar("p900", _vector(900), threshold=0.99, question="q900") is not None  # kept in use
        assert cache.index_entries <= 100
    assert cache.similar("p999", _vector(999), threshold=0.99, question="q999").key == "k999"
    assert cache.similar("p900", _vector(900), threshold=0.99, question="q900").key == "k900"  # recently looked up
    assert cache.similar("p5", _vector(5), threshold=0.99, question="q5") is None  # evicted from memory: a miss
    assert cache.get("k5") is not None  # while the answer itself stays on disk

    one = ResponseCache(tmp_path / "one", size_limit_bytes=10**9, max_index_entries=100)
    for i in range(300):  # one partition over the bound: its oldest vectors go
        one.put(f"k{i}", answer(f"answer {i}", "q", f"r{i}"), ttl_s=600, tag="cloud:x", partition="p", embedding=_vector(i, 512))
        assert one.similar("p", _vector(i, 512), threshold=0.99, question="q").key == f"k{i}"
        assert one.index_entries <= 100
    assert one.similar("p", _vector(0, 512), threshold=0.99, question="q") is None
    assert one.similar("p", _vector(250, 512), threshold=0.99, question="q").key == "k250"


def test_a_lookup_reads_a_bounded_batch_of_a_large_backlog(tmp_path: Path) -> None:
    writer = ResponseCache(tmp_path / "c", size_limit_bytes=10**9, timeout_s=5.0)
    reader = ResponseCache(tmp_path / "c", size_limit_bytes=10**9, max_index_entries=100)
    reader.similar("p0", _vector(0), threshold=0.99, question="q")  # opened and caught up (nothing yet)
    counting = CountingStore(reader.store)
    reader._cache = counting
    with writer.store.transact():  # 10,000 vectors from another process's instance
        for i in range(10_000):
            writer.put(f"k{i}", answer(f"answer {i}", f"q{i}", f"r{i}"), ttl_s=600, tag="cloud:x",
                       partition=f"p{i % 500}", embedding=_vector(i))  # fmt: skip
    reader.similar("p0", _vector(0), threshold=0.99, question="q0")
    assert counting.vector_reads <= 100 and reader.index_entries <= 100
    for _ in range(3):
        reader.similar("p0", _vector(0), threshold=0.99, question="q0")
    assert counting.vector_reads <= 100 * 4  # each lookup bounded; the backlog too old to hold is skipped
    assert reader.similar("p499", _vector(9999), threshold=0.99, question="q9999").key == "k9999"  # caught up with the newest


# -- the route an answer is stored under ---------------------------------------------------------

LOCAL_V1, LOCAL_V2, CLOUD = "local:registry:v1", "local:registry:v2", "cloud:openai/gpt-4o@"


def exchange_for(question: str, decided: str, *, embedding: np.ndarray | None = None) -> Exchange:
    request = build_request(max_input_chars=10_000, model="auto", messages=[{"role": "user", "content": question}])
    reason = Reason.LOCAL_CATEGORY if decided == "local" else Reason.CATEGORY_NOT_LOCAL
    decision = Decision(decided, reason, cloud_model="gpt-4o")  # type: ignore[arg-type]
    exchange = Exchange(request, decision, "ORDER", 0.9, 1.0)
    exchange.embedding = embedding
    return exchange


def served(exchange: Exchange, tier: str, model: str, text: str, adapter_version: str | None = None) -> Exchange:
    if tier != exchange.decision.tier:
        exchange.fall_back(exchange.decision.tier, tier, "injected")  # type: ignore[arg-type]
    exchange.serve_with(tier, "test", model, adapter_version)  # type: ignore[arg-type]
    exchange.text, exchange.finish_reason = text, "stop"
    return exchange


def hit(tier: CacheTier, question: str, route: str, *, embedding: np.ndarray | None = None) -> str | None:
    """The cached text a new request for ``question`` answered by ``route`` would get."""
    asking = exchange_for(question, "local" if route.startswith("local:") else "cloud", embedding=embedding)
    probe = tier.probe(asking, route=route)
    assert probe is not None
    found = tier.lookup(asking, probe)
    return found.answer.text if found is not None else None


def test_an_answer_after_a_fallback_is_stored_under_the_route_that_answered(tmp_path: Path) -> None:
    tier = CacheTier(CacheConfig(enabled=True, path=tmp_path / "c", similarity=0.9))
    question, vector = "where is my order", unit(1, 0, 0)

    # local was decided, failed, and the cloud answered; the engine names the route that answered
    first = exchange_for(question, "local", embedding=vector)
    first.cache_probe = tier.probe(first, route=LOCAL_V1)
    tier.remember(served(first, "cloud", "gpt-4o", "From the cloud."), trusted_local=False, route=CLOUD)
    assert hit(tier, question, LOCAL_V1, embedding=vector) is None  # never passed off as the local model's answer
    assert hit(tier, question, CLOUD) == "From the cloud."  # exact
    assert hit(tier, "where is my order?", CLOUD, embedding=unit(1, 0.05, 0)) == "From the cloud."  # semantic
    assert tier.invalidate(LOCAL_V1) == 0 and tier.invalidate(CLOUD) >= 2

    # a caller that does not say which route answered: the probe's route is wrong, so nothing is stored
    second = exchange_for(question, "local", embedding=vector)
    second.cache_probe = tier.probe(second, route=LOCAL_V1)
    tier.remember(served(second, "cloud", "gpt-4o", "From the cloud again."), trusted_local=False)
    assert hit(tier, question, LOCAL_V1, embedding=vector) is None and hit(tier, question, CLOUD) is None

    # the cloud failed and the local model answered, in a category the gate has open
    third = exchange_for(question, "cloud", embedding=vector)
    third.cache_probe = tier.probe(third, route=CLOUD)
    tier.remember(served(third, "local", "qwen", "From the local model.", "v1"), trusted_local=True, route=LOCAL_V1)
    assert hit(tier, question, CLOUD) is None and hit(tier, question, LOCAL_V1, embedding=vector) == "From the local model."
    assert tier.invalidate(LOCAL_V1) >= 2  # a rollback of v1 evicts it
    assert hit(tier, question, LOCAL_V1, embedding=vector) is None

    # ... and in a category the gate has not opened: not stored at all
    fourth = exchange_for(question, "cloud", embedding=vector)
    fourth.cache_probe = tier.probe(fourth, route=CLOUD)
    tier.remember(served(fourth, "local", "qwen", "Unproven local answer.", "v1"), trusted_local=False, route=LOCAL_V1)
    assert hit(tier, question, LOCAL_V1, embedding=vector) is None and hit(tier, question, CLOUD) is None


def test_an_answer_from_an_adapter_swapped_in_during_the_request_is_stored_under_that_version(tmp_path: Path) -> None:
    tier = CacheTier(CacheConfig(enabled=True, path=tmp_path / "c", similarity=0.9))
    question, vector = "cancel my order", unit(0, 1, 0)
    exchange = exchange_for(question, "local", embedding=vector)
    exchange.cache_probe = tier.probe(exchange, route=LOCAL_V1)  # v1 served when the request was probed
    tier.remember(served(exchange, "local", "qwen", "Cancelled by v2.", "v2"), trusted_local=True)
    assert hit(tier, question, LOCAL_V1, embedding=vector) is None
    assert hit(tier, question, LOCAL_V2, embedding=vector) == "Cancelled by v2."
    assert tier.invalidate(LOCAL_V1) == 0
    assert tier.invalidate(LOCAL_V2) >= 2 and hit(tier, question, LOCAL_V2, embedding=vector) is None
