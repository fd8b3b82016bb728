"""The trust boundary, measured (``make eval-security``): writes ``evals/results/security.json``.

1. **Control keywords**: every keyword the installed litellm reads from its ``**kwargs`` (its
   ``completion`` signature and ``all_litellm_params``) that is not an OpenAI chat parameter is
   sent, as a ``Client`` keyword, inside ``extra_body``, and in an HTTP body to ``router serve``,
   with a value that would redirect the call (a trap server on loopback), answer it
   (``mock_response``) or change its credentials. Honoured means anything but a 400 naming the
   keyword, or any request reaching the trap or the configured endpoint.
2. **Private conversations**: the committed conversations in
   ``evals/corpora/private_conversations.jsonl`` (an earlier turn private: a Bitext PAYMENT query,
   or PII) are replayed turn by turn through ``router.Client`` with ``make demo``'s classifier and
   PAYMENT private; a leak is a private turn's text in anything the stand-in cloud received.
   The same conversations are also judged by the last-message rule (the policy given no earlier
   turns), to show what the old rule would have sent. They are replayed twice: with the untuned
   packaged model, and with the shipped adapter serving (``*_adapter`` keys), and every local
   answer a user received is judged whole by serving's guard with its conversation.
3. **Feedback**: thirty votes on one response, against a category that is closed (votes may
   open it) and one that is open: the number of gate verdict changes they cause.
4. **PII**: the matcher's recall and false alarms on the committed corpus (``evals.pii_eval``).

``private_degenerate_served`` comes from ``make demo``, which merges it into the same file.
"""

from __future__ import annotations

import argparse
import contextlib
import inspect
import json
import os
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
from tqdm import tqdm

RESULTS = Path(__file__).resolve().parent / "results" / "security.json"
CONVERSATIONS = Path(__file__).resolve().parent / "corpora" / "private_conversations.jsonl"
ATTACKER_KEY = "sk-attacker-000000000000000000"


def control_keys() -> list[str]:
    """Every keyword litellm reads for itself from ``completion(**kwargs)``: not an OpenAI chat parameter."""
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    import litellm
    from litellm.types.utils import all_litellm_params

    from router import OPENAI_CHAT_PARAMETERS

    signature = [p for p in inspect.signature(litellm.completion).parameters if p not in ("args", "kwargs")]
    return sorted((set(signature) | set(all_litellm_params)) - OPENAI_CHAT_PARAMETERS)


def attack_value(name: str, trap_base: str) -> Any:
    """A value that would show the keyword being honoured: redirect, answer, or re-key the call."""
    if name == "mock_response":
        return "PWNED: written by the caller"
    if "base" in name or "url" in name or "endpoint" in name or name in ("azure", "headers", "extra_headers"):
        return trap_base if "header" not in name else {"Authorization": f"Bearer {ATTACKER_KEY}"}
    if "key" in name or "token" in name or "secret" in name:
        return ATTACKER_KEY
    return "attacker-value"


@contextlib.contextmanager
def serving(client: Any) -> Iterator[httpx.Client]:
    """``router serve`` for ``client`` on a free loopback port, in this process; an HTTP client to it."""
    import socket
    import threading

    from router.server import build_server

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = int(sock.getsockname()[1])
    server = build_server(client, port=port, log_level="warning", warm=False)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        if time.monotonic() > deadline:
            raise TimeoutError("router serve did not start")
        time.sleep(0.05)
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60) as http:
            yield http
    finally:
        server.should_exit = True
        thread.join(timeout=30)


def probe_control_keys(client: Any, keys: list[str], cloud: Any, trap: Any) -> dict[str, Any]:
    """Send each key three ways (keyword, ``extra_body``, HTTP body).

    A key is *honoured* when its value changed anything: the trap server was called, the mock text
    came back, or the value reached the configured endpoint in a request body. It is *refused* when
    all three ways got a 400 naming it. The Python SDK's own transport options (``timeout``,
    ``extra_headers``) are accepted as ``create`` keywords, as the SDK accepts them, and never
    forwarded: they are listed apart.
    """
    from router import SDK_OPTIONS, BadRequestError

    honoured: list[str] = []
    refused: list[str] = []
    sdk_options: list[str] = []
    messages = [{"role": "user", "content": "where is my order?"}]
    with serving(client) as http:
        for name in tqdm(keys, unit="key", desc="control keywords"):
            value = attack_value(name, trap.api_base)
            marks = (len(cloud.received()), len(trap.received()))
            outcomes, texts = [], []
            for extra in ({name: value}, {"extra_body": {name: value}}):
                try:
                    r = client.chat.completions.create(model="gpt-4o", messages=messages, max_tokens=8, **extra)
                    outcomes.append("accepted")
                    texts.append(r.choices[0].message.content or "")
                except BadRequestError as err:
                    outcomes.append("refused" if err.body.get("param") == name else "other 400")  # type: ignore[union-attr]
                except TypeError:  # a keyword of create()'s own signature: refused by Python before anything runs
                    outcomes.append("refused")
            response = http.post("/v1/chat/completions", json={"model": "gpt-4o", "messages": messages, "max_tokens": 8, name: value})
            outcomes.append("refused" if response.status_code == 400 and response.json()["error"]["param"] == name else f"http {response.status_code}")
            if response.status_code == 200:
                texts.append(response.json()["choices"][0]["message"]["content"] or "")
            reached = [e["body"] for e in cloud.received()[marks[0]:]]
            changed = (
                len(trap.received()) > marks[1]
                or any("PWNED" in t for t in texts)
                or any(json.dumps(value) in json.dumps(body) or str(value) in json.dumps(body) for body in reached)
            )
            if changed:
                honoured.append(name)
            if outcomes == ["refused"] * 3:
                refused.append(name)
            elif outcomes == ["accepted", "refused", "refused"] and name in SDK_OPTIONS:
                sdk_options.append(name)
    not_refused = sorted(set(keys) - set(refused) - set(sdk_options))
    return {
        "control_keys_tried": len(keys),
        "control_keys_honoured": len(honoured),
        "control_keys_honoured_names": honoured,
        "control_keys_refused": len(refused),
        "control_keys_sdk_options_accepted_not_forwarded": sdk_options,
        "control_keys_otherwise_answered": not_refused,
    }


def _leaked(text: str, bodies: list[dict[str, Any]]) -> bool:
    needle = " ".join(text.split()).lower()
    for body in bodies:
        for message in body.get("messages", []):
            content = message.get("content")
            content = content if isinstance(content, str) else json.dumps(content)
            if needle in " ".join(content.split()).lower():
                return True
    return False


def replay_conversations(client: Any, conversations: list[dict[str, Any]], cloud: Any, *, max_tokens: int) -> dict[str, Any]:
    """Each conversation turn by turn as a chat app sends it; what reached the cloud, and what the last-message rule would send."""
    from router import APIError

    from hybrid_common.chat import earlier_turns

    policy, private_categories, local = client._engine.policy, frozenset(), client.config.local
    leaks, old_rule_leaks, turns, cloud_turns, handoffs, degenerate, local_answers, examples = 0, 0, 0, 0, 0, 0, 0, []
    for conversation in tqdm(conversations, unit="conversation", desc="private conversations"):
        before = len(cloud.received())
        history: list[dict[str, str]] = []
        old_rule_sent = False
        for text in conversation["turns"]:
            history.append({"role": "user", "content": text})
            turns += 1
            try:
                r = client.chat.completions.create(model="gpt-4o", messages=list(history), max_tokens=max_tokens)
            except APIError as err:
                history.append({"role": "assistant", "content": f"(error: {type(err).__name__})"})
                continue
            info = r.router
            cloud_turns += info.tier == "cloud"
            handoffs += info.reason.value == "private_handoff"
            if info.tier == "local":  # what a user received, judged whole by serving's guard with the conversation
                local_answers += 1
                guard = local.new_guard(text, earlier_turns(history))
                degenerate += guard.check_text(r.choices[0].message.content or "") is not None
            # The last-message rule: the same request, judged with no earlier turns and no PII outside the last one.
            if len(history) > 1:
                request = client._build({"model": "gpt-4o", "messages": [history[-1]], "max_tokens": max_tokens})
                old = policy.decide(request, category=info.category, has_classifier=True, private_categories=private_categories)
                old_rule_sent = old_rule_sent or old.tier == "cloud"
            if len(examples) < 6 and len(history) > 1:
                examples.append({"conversation": conversation["id"], "turn": text, "tier": info.tier, "reason": info.reason.value,
                                 "detail": info.detail})  # fmt: skip
            history.append({"role": "assistant", "content": r.choices[0].message.content or ""})
        received = cloud.received()[before:]
        if _leaked(conversation["private_text"], [entry["body"] for entry in received]):
            leaks += 1
        old_rule_leaks += old_rule_sent
    return {
        "private_conversations": len(conversations),
        "private_conversation_turns": turns,
        "private_conversation_leaks": leaks,
        "private_conversation_cloud_turns": cloud_turns,
        "private_conversation_handoffs": handoffs,
        "private_conversation_local_answers": local_answers,
        "private_conversation_degenerate_served": degenerate,
        "private_conversations_last_message_rule_would_send": old_rule_leaks,
        "private_conversation_examples": examples,
    }


def feedback_flips(workdir: Path) -> dict[str, Any]:
    """Thirty votes on one local answer: verdict changes on a closed category (votes may open it) and an open one."""
    from router import Client, RouterConfig
    from router.traffic_log import LogRecord, TrafficLog

    log = workdir / "feedback.sqlite3"
    with TrafficLog(log) as traffic:
        for i in range(2):
            traffic.record(LogRecord(id=f"answer-{i}", requested_model="auto", reason="local_category", stream=False, tier="local",
                                     category="ORDER", messages=[{"role": "user", "content": "where is my order?"}], response="Today."))  # fmt: skip
    flips, tried = 0, 0
    quality = {"overrides": {}, "min_samples": 3, "min_votes": 3, "votes_can_open": True}
    config = RouterConfig(local={"registry_path": None}, cloud={"preimport": False}, routing={"local_categories": ["ORDER"]},
                          quality=quality, log={"path": log}, warmup="lazy")  # fmt: skip
    with Client(config) as client:
        engine = client._engine
        key = engine.served_key()
        for answer, accepted, opened_first in (("answer-0", True, False), ("answer-1", False, True)):
            if opened_first:
                for _ in range(3):
                    engine.gate.record(key, "ORDER", 0.95, False)
            before = engine.gate.verdict(key, "ORDER").open
            for _ in range(30):
                client.feedback(answer, accepted=accepted)
                tried += 1
                flips += engine.gate.verdict(key, "ORDER").open != before
    return {"feedback_votes_sent": tried, "feedback_gate_flips": flips}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=Path(".security-eval"))
    parser.add_argument("--max-tokens", type=int, default=24)
    parser.add_argument("--results", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    started = time.perf_counter()
    from evals.demo import LOCAL_CATEGORIES, PRIVATE_CATEGORIES, load_bitext, register_shipped_adapter, split, train_classifier
    from evals.figures import merge_figures
    from evals.pii_eval import measure as measure_pii
    from evals.standin_cloud import LatencyModel, StandinCloud
    from router import Client, RouterConfig

    args.workdir.mkdir(parents=True, exist_ok=True)
    answers = args.workdir / "recorded-answers.jsonl"
    rows = load_bitext()
    answers.write_text("".join(json.dumps({"query": r["instruction"], "answer": r["response"]}) + "\n" for r in rows), encoding="utf-8")
    figures: dict[str, Any] = {}
    # data collection needs only the answers' content, not a provider's pacing
    with (
        StandinCloud(answers=answers, record=args.workdir / "cloud.jsonl", latency=LatencyModel.none()) as cloud,
        StandinCloud(answers=answers, record=args.workdir / "trap.jsonl", latency=LatencyModel.none()) as trap,
    ):
        train, calibration, _ = split(rows)
        print(f"[1/4] training the demo's classifier ({len(train)} queries)")
        train_classifier(train, calibration, args.workdir / "classifier")
        for stale in args.workdir.glob("traffic.sqlite3*"):
            stale.unlink()
        config = RouterConfig(
            models={"gpt-4o": {"litellm_model": cloud.litellm_model, "api_base": cloud.api_base, "api_key": "sk-operator-key-00000000"}},
            cloud={"default_model": "gpt-4o"},
            classifier={"path": args.workdir / "classifier"},
            routing={"local_categories": LOCAL_CATEGORIES, "private_categories": PRIVATE_CATEGORIES},
            quality={"evidence_dir": args.workdir / "evidence"},
            log={"path": args.workdir / "traffic.sqlite3"},
            warmup="lazy",
        )
        with Client(config) as client:
            keys = control_keys()
            print(f"[2/4] {len(keys)} litellm control keywords, each as a keyword, in extra_body and over HTTP")
            trap_before = len(trap.received())
            figures |= probe_control_keys(client, keys, cloud, trap)
            figures["control_keys_trap_requests"] = len(trap.received()) - trap_before
            conversations = [json.loads(line) for line in CONVERSATIONS.read_text(encoding="utf-8").splitlines() if line.strip()]
            print(f"[3/4] {len(conversations)} conversations whose earlier turn is private, turn by turn")
            figures |= replay_conversations(client, conversations, cloud, max_tokens=args.max_tokens)
        print("      again with the shipped adapter serving (make demo's phase 2), which answers where the base model cannot")
        version = register_shipped_adapter(args.workdir / "registry")
        tuned = config.model_copy(update={"local": config.local.model_copy(update={"registry_path": args.workdir / "registry"})})
        with Client(tuned) as client:
            assert client._engine.served_key() == f"registry:{version}"
            adapter = replay_conversations(client, conversations, cloud, max_tokens=args.max_tokens)
        figures |= {f"{k}_adapter": v for k, v in adapter.items() if k not in ("private_conversations",)}
        print("[4/4] feedback stuffing and the PII corpus")
        with tempfile.TemporaryDirectory() as tmp:
            figures |= feedback_flips(Path(tmp))
        pii = measure_pii()
        figures |= {k: v for k, v in pii.items() if not isinstance(v, list)}
    figures["security_eval_minutes"] = (time.perf_counter() - started) / 60
    merged = merge_figures(args.results, figures)
    print(json.dumps({k: v for k, v in merged.items() if not isinstance(v, list)}, indent=1))


if __name__ == "__main__":
    main()
