"""ResponseCache on its own: keys, specifics, semantic lookup, invalidation, and two processes sharing one directory."""

from __future__ import annotations

import secrets
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np

from router._cache_keys import request_key, scope_of, specifics, unsupported_specifics
from router._request import build_request
from router.cache import CachedAnswer, ResponseCache


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
