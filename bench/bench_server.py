"""The ``server`` suite: what the memory server (``headroom-memory serve``) adds to a call.

``python -m bench server [--quick] [--calls N] [--seconds S] [--users U]``

Three processes on 127.0.0.1: an instant upstream (a Starlette app on uvicorn, started by this
module with ``--upstream-only PORT``) that answers every chat completion at once with a short
answer and a ``<memory>`` block adding one memory; the real ``headroom-memory serve`` in front
of it (``--mode fast``, the default MiniLM embedder, a fresh store in a temporary directory);
and this process, the client (httpx2, keep-alive connections).

Figures:
- added latency: the same request sent straight to the upstream and through the server,
  interleaved call by call (the order alternating), one at a time; p50/p99 of each and of the
  difference per pair, non-streamed and streamed (time to the end of the stream). Through the
  server each call is injected (a search over the user's memories), parsed, and its block
  stored on the server's writer thread after the answer has gone out.
  Two more rows split the cost: ``"memory": "off"`` (the SDK path through the server with no
  memory work) and no end user (the raw passthrough).
- throughput: requests per second through the server with 1, 10 and 50 concurrent clients for
  ``--seconds`` each (non-streamed, users spread over ``--users``), with p50/p99 latency; the
  upstream alone at the same concurrency beside it.

The client, the server and the upstream share the machine's cores: at 50 clients the client's
own Python loop is a large share of the CPU. The CPU time used by the server and the upstream
is reported, and so is the CPU of every other process (``bench.common.CpuWatch`` minus the two
subprocesses). Results go to ``bench/results/server.json`` (``server-quick.json``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx2

from bench.common import CpuWatch, format_table, machine_info, percentiles, write_json

ANSWER = (
    "Here is a short answer. Start with the simplest thing that works, measure it under a "
    "realistic load, and keep the configuration in one place."
)
CONCURRENCY = (1, 10, 50)
SERVE = (sys.executable, "-m", "headroom.memory.cli", "serve")


@dataclass(frozen=True)
class Config:
    calls: int
    warmup: int
    seconds: float
    users: int
    quick: bool


def parse_args(argv: list[str]) -> Config | int:
    parser = argparse.ArgumentParser(prog="python -m bench server", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="few calls, short runs")
    parser.add_argument("--calls", type=int, help="interleaved latency pairs (default 300)")
    parser.add_argument("--seconds", type=float, help="per concurrency level (default 8)")
    parser.add_argument("--users", type=int, default=100, help="end users spread over")
    parser.add_argument("--upstream-only", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.upstream_only is not None:
        run_upstream(args.upstream_only)
        return 0
    calls = args.calls or (40 if args.quick else 300)
    seconds = args.seconds or (2.0 if args.quick else 8.0)
    if calls < 2 or seconds <= 0 or args.users < 1:
        parser.error("--calls >= 2, --seconds > 0 and --users >= 1")
    return Config(calls, 10 if args.quick else 30, seconds, args.users, args.quick)


# --- the instant upstream (its own process) ----------------------------------------------------


def _completion(body: dict[str, Any], text: str) -> dict[str, Any]:
    return {
        "id": "chatcmpl-bench",
        "object": "chat.completion",
        "created": 0,
        "model": body.get("model", "bench"),
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "finish_reason": "stop",
                "logprobs": None,
            }
        ],
        "usage": {"prompt_tokens": 50, "completion_tokens": 40, "total_tokens": 90},
    }


def _chunks(body: dict[str, Any], text: str) -> Iterator[bytes]:
    def chunk(delta: dict[str, Any], finish: str | None) -> bytes:
        payload = {
            "id": "chatcmpl-bench",
            "object": "chat.completion.chunk",
            "created": 0,
            "model": body.get("model", "bench"),
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        }
        return b"data: " + json.dumps(payload).encode() + b"\n\n"

    yield chunk({"role": "assistant", "content": ""}, None)
    for i in range(0, len(text), 16):
        yield chunk({"content": text[i : i + 16]}, None)
    yield chunk({}, "stop")
    yield b"data: [DONE]\n\n"


def run_upstream(port: int) -> None:
    """Serve the instant upstream on 127.0.0.1:``port`` until killed."""
    import uvicorn
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse, Response, StreamingResponse
    from starlette.routing import Route

    async def chat(request: Request) -> Response:
        body = await request.json()
        last = body["messages"][-1]["content"]
        block = json.dumps({"add": [{"text": f"User said: {last}", "category": "fact"}]})
        text = f"{ANSWER}\n\n<memory>{block}</memory>"
        if body.get("stream"):
            return StreamingResponse(_chunks(body, text), media_type="text/event-stream")
        return JSONResponse(_completion(body, text))

    app = Starlette(routes=[Route("/v1/chat/completions", chat, methods=["POST"])])
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)


# --- processes ------------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _wait_listening(port: int, proc: subprocess.Popen[bytes], what: str) -> None:
    deadline = time.monotonic() + 120
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{what} did not start") from None
            time.sleep(0.05)


def _cpu_seconds(pid: int) -> float:
    """CPU seconds (user + system, all threads) a live process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@contextmanager
def _processes(db: Path) -> Iterator[tuple[str, str, list[int]]]:
    """(upstream base URL, server base URL, their pids) while both run."""
    up_port, server_port = _free_port(), _free_port()
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("HEADROOM_SERVER_KEY", None)
    upstream = subprocess.Popen(
        [sys.executable, "-m", "bench", "server", "--upstream-only", str(up_port)], env=env
    )
    procs = [upstream]
    try:
        _wait_listening(up_port, upstream, "the upstream")
        up_url = f"http://127.0.0.1:{up_port}/v1"
        server = subprocess.Popen(
            [*SERVE, "--upstream", up_url, "--port", str(server_port), "--db", str(db)],
            env=env,
        )
        procs.append(server)
        _wait_listening(server_port, server, "headroom-memory serve")
        yield up_url, f"http://127.0.0.1:{server_port}/v1", [p.pid for p in procs]
    finally:
        for proc in reversed(procs):
            proc.terminate()
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


# --- measurements ---------------------------------------------------------------------------------


def _body(user: str | None, i: int, stream: bool) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": "bench",
        "messages": [
            {"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "content": f"Question {i}: how should I deploy service {i % 37}?"},
        ],
    }
    if user is not None:
        body["user"] = user
    if stream:
        body["stream"] = True
    return body


def _call(client: httpx2.Client, base: str, body: dict[str, Any]) -> float:
    started = time.perf_counter()
    if body.get("stream"):
        with client.stream("POST", base + "/chat/completions", json=body) as response:
            for _ in response.iter_bytes():
                pass
            status = response.status_code
    else:
        status = client.post(base + "/chat/completions", json=body).status_code
    elapsed = time.perf_counter() - started
    if status != 200:
        raise RuntimeError(f"status {status}")
    return elapsed * 1000


def latency(
    cfg: Config, up: str, server: str, stream: bool, variant: str = "memory"
) -> dict[str, Any]:
    """Interleaved pairs: the same request direct and through the server.

    ``variant``: ``memory`` (an end user: the whole pipeline), ``off`` (an end user with
    ``"memory": "off"``: the SDK path without memory work), ``passthrough`` (no end user: the
    raw byte passthrough)."""

    def through_body(user: str, i: int) -> dict[str, Any]:
        if variant == "passthrough":
            return _body(None, i, stream)
        body = _body(user, i, stream)
        if variant == "off":
            body["memory"] = "off"
        return body

    direct: list[float] = []
    through: list[float] = []
    with httpx2.Client(timeout=60) as client:
        for i in range(cfg.warmup):
            _call(client, up, _body(None, i, stream))
            _call(client, server, through_body(f"user-{i % cfg.users}", i))
        for i in range(cfg.calls):
            user = f"user-{i % cfg.users}"
            order = (0, 1) if i % 2 == 0 else (1, 0)
            for which in order:
                if which == 0:
                    direct.append(_call(client, up, _body(None, i, stream)))
                else:
                    through.append(_call(client, server, through_body(user, i)))
    added = [t - d for t, d in zip(through, direct, strict=True)]
    return {
        "direct_ms": percentiles(direct),
        "server_ms": percentiles(through),
        "added_ms": percentiles(added),
        "added_p50_of_medians_ms": percentiles(through)["p50"] - percentiles(direct)["p50"],
        "calls": cfg.calls,
    }


async def _load(base: str, concurrency: int, seconds: float, users: int | None) -> dict[str, Any]:
    limits = httpx2.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    times: list[float] = []
    errors = 0
    counter = 0
    async with httpx2.AsyncClient(timeout=60, limits=limits) as client:
        deadline = time.perf_counter() + seconds

        async def worker() -> None:
            nonlocal errors, counter
            while time.perf_counter() < deadline:
                counter += 1
                i = counter
                user = None if users is None else f"user-{i % users}"
                started = time.perf_counter()
                response = await client.post(base + "/chat/completions", json=_body(user, i, False))
                if response.status_code == 200:
                    times.append((time.perf_counter() - started) * 1000)
                else:
                    errors += 1

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall = time.perf_counter() - started
    return {
        "requests": len(times),
        "errors": errors,
        "wall_s": wall,
        "per_s": len(times) / wall,
        "latency_ms": percentiles(times) if times else None,
    }


def throughput(cfg: Config, up: str, server: str, pids: list[int]) -> list[dict[str, Any]]:
    rows = []
    for concurrency in CONCURRENCY:
        row: dict[str, Any] = {"concurrency": concurrency}
        for name, base, users in (("server", server, cfg.users), ("direct", up, None)):
            cpu0 = [_cpu_seconds(pid) for pid in pids]
            with CpuWatch() as watch:
                row[name] = asyncio.run(_load(base, concurrency, cfg.seconds, users))
            cpu = [_cpu_seconds(pid) - c for pid, c in zip(pids, cpu0, strict=True)]
            row[name]["upstream_cpu_s"], row[name]["server_cpu_s"] = cpu
            report = watch.report
            if report.others_cpu_s is not None:
                others = max(0.0, report.others_cpu_s - sum(cpu))
                cores = len(os.sched_getaffinity(0))
                row[name]["client_cpu_s"] = report.own_cpu_s
                row[name]["others_cpu_s"] = others
                row[name]["others_share"] = others / (report.wall_s * cores)
        rows.append(row)
    return rows


# --- the run --------------------------------------------------------------------------------------


def _others_line(reports: list[dict[str, Any]]) -> str:
    shares = [r["others_share"] for r in reports if r.get("others_share") is not None]
    if not shares:
        return "n/a"
    return f"{min(shares):.0%}-{max(shares):.0%} of the machine"


def run(cfg: Config) -> dict[str, Any]:
    info = machine_info()
    with (
        tempfile.TemporaryDirectory(prefix="bench-server-") as tmp,
        _processes(Path(tmp) / "memory.db") as (up, server, pids),
    ):
        with CpuWatch() as lat_watch:
            cpu0 = [_cpu_seconds(pid) for pid in pids]
            lat = {
                "non-streamed": latency(cfg, up, server, False),
                "streamed": latency(cfg, up, server, True),
                "non-streamed, memory off": latency(cfg, up, server, False, "off"),
                "non-streamed, no user (passthrough)": latency(
                    cfg, up, server, False, "passthrough"
                ),
            }
            lat_cpu = sum(_cpu_seconds(pid) - c for pid, c in zip(pids, cpu0, strict=True))
        thr = throughput(cfg, up, server, pids)
    lat_report = lat_watch.report
    lat_others = None
    if lat_report.others_cpu_s is not None:
        lat_others = max(0.0, lat_report.others_cpu_s - lat_cpu) / (
            lat_report.wall_s * len(os.sched_getaffinity(0))
        )
    result = {
        "machine": info,
        "config": cfg.__dict__,
        "latency": lat,
        "latency_others_share": lat_others,
        "throughput": thr,
    }
    print(f"machine: {info['cpu_model']}, {info['usable_cores']} usable cores")
    print(f"\nAdded latency, {cfg.calls} interleaved pairs, one at a time (ms)")
    print(
        format_table(
            [
                "request",
                "direct p50",
                "direct p99",
                "server p50",
                "server p99",
                "added p50",
                "added p99",
            ],
            [
                [
                    kind,
                    r["direct_ms"]["p50"],
                    r["direct_ms"]["p99"],
                    r["server_ms"]["p50"],
                    r["server_ms"]["p99"],
                    r["added_ms"]["p50"],
                    r["added_ms"]["p99"],
                ]
                for kind, r in lat.items()
            ],
        )
    )
    if lat_others is not None:
        print(f"CPU used by other processes meanwhile: {lat_others:.0%} of the machine")
    print(f"\nThroughput, {cfg.seconds:g} s per level, {cfg.users} users (requests/s)")
    print(
        format_table(
            [
                "clients",
                "server req/s",
                "p50 ms",
                "p99 ms",
                "errors",
                "direct req/s",
                "server CPU s",
                "client CPU s",
            ],
            [
                [
                    r["concurrency"],
                    r["server"]["per_s"],
                    (r["server"]["latency_ms"] or {}).get("p50", float("nan")),
                    (r["server"]["latency_ms"] or {}).get("p99", float("nan")),
                    r["server"]["errors"],
                    r["direct"]["per_s"],
                    r["server"]["server_cpu_s"],
                    r["server"].get("client_cpu_s", float("nan")),
                ]
                for r in thr
            ],
        )
    )
    others = _others_line([r[k] for r in thr for k in ("server", "direct")])
    print(f"CPU used by other processes during the throughput runs: {others}")
    path = write_json("server-quick" if cfg.quick else "server", result)
    print(f"\nresults: {path}")
    return result


def main(argv: list[str]) -> int:
    """``python -m bench server [options]``."""
    cfg = parse_args(argv)
    if isinstance(cfg, int):
        return cfg
    run(cfg)
    return 0
