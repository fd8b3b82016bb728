"""The traffic log under a crash: ``router serve`` killed with SIGKILL mid-load, rows counted after.

Used by ``tests/router/test_log_durability.py`` (small N, in CI) and ``make bench-load`` (the
``lost_log_rows`` figure). ``router serve`` runs in its own process with the stand-in cloud in
recorded-answer mode; ``clients`` threads send chat completions, half of them streamed. A request
is *acknowledged* when its whole answer reached the caller (the JSON body, or a stream's closing
chunk). Part way through, another connection holds the SQLite database locked, so the rows of
that window can only go to the spool; the server is killed with SIGKILL while it is still locked.
Then the log is opened afresh (which drains the spool) and every acknowledged request id is
looked up: ``lost`` counts those missing.

Also :func:`write_latency`, what durability costs per request: ``record()`` with SQLite's
``synchronous=NORMAL`` (the default), ``FULL``, and the spool's append with fsync.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import statistics
import threading
import time
from pathlib import Path
from typing import Any

import httpx

__all__ = ["kill_nine_run", "write_latency"]


def _config(path: Path, *, cloud_model: str, api_base: str, port: int, log: Path) -> Path:
    from evals.demo_retrain import cloud_tables

    path.write_text(
        f"""# Written by evals/log_durability.py: no classifier, no local model; every answer from the cloud
[log]
path = "{log}"
busy_timeout_s = 0.05

[server]
port = {port}
max_concurrency = 8

{cloud_tables(cloud_model, api_base)}""",
        encoding="utf-8",
    )
    return path


def _ask(http: httpx.Client, i: int) -> str | None:
    """One request; its id if the whole answer arrived, else None."""
    body = {"model": "gpt-4o", "max_tokens": 16, "messages": [{"role": "user", "content": f"Where is my order {i}?"}]}
    if i % 2:
        body["stream"] = True
        request_id, closed = None, False
        with http.stream("POST", "/v1/chat/completions", json=body) as r:
            if r.status_code != 200:
                return None
            for line in r.iter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                chunk = json.loads(line[6:])
                if "error" in chunk:
                    return None
                request_id = chunk["id"]
                if any(c.get("finish_reason") for c in chunk.get("choices", [])):
                    closed = True
        return request_id if closed else None
    r = http.post("/v1/chat/completions", json=body)
    return r.json()["id"] if r.status_code == 200 else None


def kill_nine_run(workdir: Path, *, requests: int, clients: int = 8, lock_after: float = 0.4, kill_after: float = 0.7) -> dict[str, Any]:
    """Send ``requests`` from ``clients`` threads; lock the log at ``lock_after`` of them, SIGKILL at ``kill_after``."""
    from evals.router_process import router_serve
    from evals.standin_cloud import LatencyModel, StandinCloud, _free_port
    from router.traffic_log import TrafficLog

    workdir.mkdir(parents=True, exist_ok=True)
    log = workdir / "traffic.sqlite3"
    for stale in workdir.glob("traffic.sqlite3*"):
        stale.unlink()
    answers = workdir / "answers.jsonl"
    answers.write_text("", encoding="utf-8")
    acknowledged: list[str] = []
    sent = [0]
    lock = threading.Lock()
    # the run tests the log, not the cloud: answer at once, as the stand-in did before it had a latency model
    with StandinCloud(answers=answers, record=workdir / "cloud.jsonl", latency=LatencyModel.none()) as cloud:
        port = _free_port()
        config = _config(workdir / "router.toml", cloud_model=cloud.litellm_model, api_base=cloud.api_base, port=port, log=log)
        with router_serve(config, port, log_level="error", ready_timeout_s=120) as (url, server):
            TrafficLog(log).count()  # the schema exists before another connection locks the file

            def client() -> None:
                with httpx.Client(base_url=url, timeout=30) as http:
                    while True:
                        with lock:
                            i = sent[0]
                            sent[0] += 1
                        if i >= requests or server.poll() is not None:
                            return
                        try:
                            request_id = _ask(http, i)
                        except (httpx.HTTPError, json.JSONDecodeError):
                            request_id = None  # the server died under this request: not acknowledged
                        if request_id is not None:
                            with lock:
                                acknowledged.append(request_id)

            threads = [threading.Thread(target=client) for _ in range(clients)]
            for t in threads:
                t.start()
            while len(acknowledged) < lock_after * requests:
                time.sleep(0.01)
            holder = sqlite3.connect(log, isolation_level=None)
            holder.execute("BEGIN EXCLUSIVE")  # every write from here on is refused: spooled
            while len(acknowledged) < kill_after * requests:
                time.sleep(0.01)
            os.kill(server.pid, signal.SIGKILL)
            server.wait(30)
            killed_at = len(acknowledged)
            for t in threads:
                t.join(60)
            holder.execute("ROLLBACK")
            holder.close()
    spool = log.with_name(log.name + ".spool")
    spooled_lines = len(spool.read_bytes().splitlines()) if spool.exists() else 0
    with TrafficLog(log) as reopened:
        reopened.drain()  # what the killed process spooled (a running log drains it in the background)
        logged = {r.id for r in reopened.records()}
    lost = [i for i in acknowledged if i not in logged]
    return {
        "requests_sent": min(sent[0], requests),
        "acknowledged": len(acknowledged),
        "acknowledged_at_kill": killed_at,
        "spooled_at_kill": spooled_lines,
        "rows_after_restart": len(logged),
        "lost": len(lost),
    }


def write_latency(workdir: Path, rows: int = 400) -> dict[str, float]:
    """Median and p99 microseconds of one ``record()`` for each durability mode, measured side by side."""
    from router.log_spool import LogSpool
    from router.traffic_log import LogRecord, TrafficLog

    workdir.mkdir(parents=True, exist_ok=True)
    logs = {}
    for mode in ("normal", "full"):
        for stale in workdir.glob(f"latency-{mode}.sqlite3*"):
            stale.unlink()
        logs[mode] = TrafficLog(workdir / f"latency-{mode}.sqlite3", synchronous=mode)
    spool = LogSpool(workdir / "latency.spool")
    spool.path.unlink(missing_ok=True)
    samples: dict[str, list[float]] = {"normal": [], "full": [], "spool": []}
    message = [{"role": "user", "content": "Where is my order? " * 8}]
    for i in range(rows):  # interleaved, so drift on this machine hits every mode alike
        for mode, log in logs.items():
            record = LogRecord(id=f"{mode}-{i}", requested_model="auto", reason="x", stream=False, messages=message, response="It ships tomorrow. " * 10)
            started = time.perf_counter()
            log.record(record)
            samples[mode].append((time.perf_counter() - started) * 1e6)
        started = time.perf_counter()
        spool.append({"id": f"spool-{i}", "messages": message, "response": "It ships tomorrow. " * 10})
        samples["spool"].append((time.perf_counter() - started) * 1e6)
    for log in logs.values():
        log.close()
    out: dict[str, float] = {}
    for mode, values in samples.items():
        values.sort()
        out[f"log_write_{mode}_p50_us"] = statistics.median(values)
        out[f"log_write_{mode}_p99_us"] = values[int(0.99 * (len(values) - 1))]
    return out
