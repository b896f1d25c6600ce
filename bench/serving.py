"""Gateway overhead against vLLM's own OpenAI server, and feedback ingestion.

    .venv/bin/python -m bench.serving [--model DIR] [--requests 300] [--concurrency 1 8 32]
                                      [--stream-requests 96] [--feedback 4000]
                                      [--workers-feedback 8000]

One vLLM OpenAI server (CPU, the tiny demo model, served as ``base``, launched as the service
launches it: `serving.engine.EngineProcess`, fp32) and one gateway in front
of it, wired as tests/fixtures/gateway.py does (auth off: the ``user`` field names the caller;
outbox draining into an embedded SQLite event log) but in its own process (multiprocessing,
spawn; uvicorn), so that the load generator does not share its GIL. All on loopback, sharing
this machine's cores. ``--profile-gateway FILE`` runs the gateway under cProfile (CPU time).

Phases:
  chat        non-streamed chat completions, the same prompts and sampling (temperature 0,
              ``max_tokens`` 32) sent to vLLM directly and through the gateway, at each
              concurrency (closed loop: that many requests in flight). Per concurrency the two
              targets alternate in ABBA order (direct, gateway, gateway, direct; half of the
              requests each time) so that drift in the machine's load hits both alike.
              Reported: req/s, p50/p99 latency, and the gateway/direct ratios.
              Targets: throughput >= 0.95x direct, p99 <= 1.10x direct.
  stream      the same, streamed, at one concurrency: time to first token p50/p99.
  feedback    POST /v1/feedback (thumbs on completion ids from the chat phase) at concurrency
              32: accepted/s (each is durable in the outbox before its 200), and delivered/s
              (until the event log holds them all). Target >= 2,000/s.
  workers     the same feedback load against `hhh serve` itself, run twice side by side on
              the same engine and settings: HHH_GATEWAY_WORKERS=1 and =2 (each with its own
              HHH_HOME and embedded event log), in ABBA order (1, 2, 2, 1; half of
              ``--workers-feedback`` each time). Reported per worker count: accepted/s,
              delivered/s, accepted vs stored in the event log (lost: their difference), and
              for 2 workers each worker's share of the delivered events (how evenly the kernel
              spread the connections). Target: 2 workers >= 1.7x 1 worker, 0 lost.
CPU: for every phase, the cores used by vLLM (all its processes), the gateway, the load
generator and everything else on the machine (other people's jobs: read numbers with them).
The feedback load generator is a minimal HTTP/1.1 keep-alive client (httpx costs more CPU per
request than the endpoint under test); the chat load generator is httpx.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import multiprocessing
import os
import secrets
import signal
import sqlite3
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np
import psutil

from streams.config import hhh_home
from common.processes import ChildProcess, free_port
from serving.engine import EngineConfig, EngineProcess

FALLBACK_MODEL = Path("/tmp/mymodel/tiny")
SERVED_BASE = "base"  # what vLLM serves; the gateway serves it as GatewaySettings.served_model_name
GATEWAY_MODEL = "hhh"
MAX_TOKENS = 32
USERS = 16

PROMPTS = [
    "How do I keep basil alive indoors?",
    "What is a good way to start running?",
    "How long should I boil an egg for a soft yolk?",
    "Can you suggest a quick vegetarian dinner?",
    "How do I remove a coffee stain from a shirt?",
    "What should I pack for a weekend hiking trip?",
    "How can I fall asleep faster?",
    "What is the difference between baking soda and baking powder?",
    "How often should I water a cactus?",
    "How do I make my phone battery last longer?",
    "What are some tips for a job interview?",
    "How do I clean a cast iron pan?",
    "What is a simple way to save money each month?",
    "How do I teach my dog to sit?",
    "Why is the sky blue?",
    "How do I write a polite email to decline an invitation?",
    "What are easy houseplants for beginners?",
    "How can I improve my handwriting?",
    "What is a good stretching routine after work?",
    "How do I make cold brew coffee at home?",
    "How do I fix a squeaky door hinge?",
    "What should I read if I liked a mystery novel?",
    "How do I keep bread fresh for longer?",
    "What is a healthy breakfast I can make in five minutes?",
    "How do I get rid of fruit flies in the kitchen?",
    "How can I learn a new language on my own?",
    "What are good games to play with kids on a rainy day?",
    "How do I pick a ripe avocado?",
    "How do I change a flat bicycle tire?",
    "What is a good way to organize my closet?",
    "How can I stay focused while working from home?",
    "How do I make a simple tomato sauce?",
    "What should I do if I cannot sleep before an exam?",
    "How do I plant tulip bulbs?",
    "How do I reduce screen time in the evening?",
    "What is a thoughtful gift for a friend who likes cooking?",
]


# ---------------------------------------------------------------- the servers under test


def resolve_model(model: str | None) -> Path:
    """``--model``, else the tiny demo model built (or found cached) under $HHH_HOME."""
    if model:
        return Path(model)
    try:
        from trainer.demo_model.build import build_demo_model
    except ImportError:
        print(f"(trainer.demo_model is not importable: using {FALLBACK_MODEL})", flush=True)
        return FALLBACK_MODEL
    print("finding (or building: minutes on a busy machine) the tiny demo model ...", flush=True)
    return build_demo_model("tiny", 0, home=hhh_home()).resolve()


def wait_until_ready(url: str, timeout_s: float, alive: Callable[[], bool]) -> None:
    """Poll ``url`` until it answers 200; fail early if the process died."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not alive():
            raise RuntimeError(f"{url}: the process exited before it was ready")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"{url} was not ready after {timeout_s:.0f} s")


def serve_gateway(engine_url: str, home: str, port: int, signing_key: str, profile_path: str | None) -> None:
    """The gateway process: wired as tests/fixtures/gateway.py does, auth off (runs until SIGTERM)."""
    import uvicorn

    from serving.app import build_gateway, create_app
    from serving.config import GatewaySettings
    from serving.limits.config import LimitSettings
    from serving.limits.server import server_options
    from streams.outbox import Outbox, OutboxDrainer
    from streams.sqlite_log import SqliteEventLog

    folder = Path(home)
    settings = GatewaySettings(
        port=port, engine_urls=[engine_url], signing_key=signing_key, auth=False,
        served_model_name=GATEWAY_MODEL,
    )
    outbox = Outbox(folder / "outbox.db", name="bench")
    drainer = OutboxDrainer(outbox, lambda: SqliteEventLog(folder / "events.db"))
    # One load generator is one caller: the per-caller limits would measure themselves.
    limits = LimitSettings(rate_per_s=0, concurrent_per_caller=0)
    gateway = build_gateway(settings, outbox, drainer, limits=limits)
    config = uvicorn.Config(create_app(gateway), host="127.0.0.1", port=port, log_level="warning",
                            **server_options(limits))
    server = uvicorn.Server(config)
    if profile_path is None:
        server.run()
        return
    import cProfile

    # uvicorn re-raises the SIGTERM it caught once it has shut down: let that one pass here,
    # so that the stats are written.
    signal.signal(signal.SIGTERM, lambda *_: None)
    profiler = cProfile.Profile(time.process_time)  # CPU, not wall: the machine is shared
    profiler.enable()
    try:
        server.run()
    finally:
        profiler.disable()
        profiler.dump_stats(profile_path)


def stop_gateway(process: multiprocessing.Process) -> None:
    if process.is_alive():
        process.terminate()  # SIGTERM: uvicorn shuts down, the drainer stops after its batch
        process.join(30)
    if process.is_alive():
        process.kill()
        process.join(10)


# ---------------------------------------------------------------- CPU accounting


class CpuMeter:
    """CPU seconds used by vLLM (its process tree), the gateway (its process tree: `hhh serve`
    and its workers), this process, and the rest."""

    def __init__(self, engine_pid: int, gateway_pid: int) -> None:
        engine, gateway = psutil.Process(engine_pid), psutil.Process(gateway_pid)
        self._groups = {
            "vllm": [engine, *engine.children(recursive=True)],
            "gateway": [gateway, *gateway.children(recursive=True)],
            "loadgen": [psutil.Process(os.getpid())],
        }

    def snapshot(self) -> dict[str, float]:
        used = {}
        for name, processes in self._groups.items():
            total = 0.0
            for process in processes:
                try:
                    times = process.cpu_times()
                    total += times.user + times.system
                except psutil.NoSuchProcess:
                    pass
            used[name] = total
        machine = psutil.cpu_times()
        used["busy"] = sum(machine) - machine.idle - getattr(machine, "iowait", 0.0)
        used["wall"] = time.perf_counter()
        return used

    @staticmethod
    def cores(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
        """Average cores used per group between two snapshots (``others``: the rest of the machine)."""
        wall = after["wall"] - before["wall"]
        used = {name: (after[name] - before[name]) / wall for name in before if name != "wall"}
        used["others"] = max(0.0, used["busy"] - used["vllm"] - used["gateway"] - used["loadgen"])
        used["seconds"] = {name: after[name] - before[name] for name in before if name != "wall"}
        return used


# ---------------------------------------------------------------- chat load


@dataclass
class Run:
    """Requests against one target: wall time, per-request latency, and what came back."""

    elapsed: float = 0.0
    latencies: list[float] = field(default_factory=list)
    ttfts: list[float] = field(default_factory=list)
    completion_tokens: int = 0
    errors: int = 0
    ids: list[tuple[str, str]] = field(default_factory=list)  # (completion_id, user)

    def add(self, other: Run) -> None:
        self.elapsed += other.elapsed
        self.latencies += other.latencies
        self.ttfts += other.ttfts
        self.completion_tokens += other.completion_tokens
        self.errors += other.errors
        self.ids += other.ids

    @property
    def rate(self) -> float:
        return len(self.latencies) / self.elapsed if self.elapsed else 0.0


def chat_body(model: str, index: int, stream: bool) -> dict:
    body = {
        "model": model,
        "messages": [{"role": "user", "content": PROMPTS[index % len(PROMPTS)]}],
        "temperature": 0.0,
        "max_tokens": MAX_TOKENS,
        "user": f"bench-user-{index % USERS}",
    }
    if stream:
        body["stream"] = True
    return body


async def one_chat(client: httpx.AsyncClient, model: str, index: int, stream: bool, run: Run) -> None:
    body = chat_body(model, index, stream)
    started = time.perf_counter()
    if not stream:
        response = await client.post("/v1/chat/completions", json=body)
        latency = time.perf_counter() - started
        if response.status_code != 200:
            run.errors += 1
            return
        payload = response.json()
        run.completion_tokens += (payload.get("usage") or {}).get("completion_tokens", 0)
        choice = payload["choices"][0]
        if "completion_id" in choice:
            run.ids.append((choice["completion_id"], body["user"]))
        run.latencies.append(latency)
        return
    first = None
    chunks = 0
    async with client.stream("POST", "/v1/chat/completions", json=body) as response:
        if response.status_code != 200:
            await response.aread()
            run.errors += 1
            return
        async for line in response.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if any((choice.get("delta") or {}).get("content") for choice in chunk.get("choices", [])):
                chunks += 1
                if first is None:
                    first = time.perf_counter() - started
    run.latencies.append(time.perf_counter() - started)
    run.ttfts.append(first if first is not None else run.latencies[-1])
    run.completion_tokens += chunks


async def chat_load(
    client: httpx.AsyncClient, model: str, concurrency: int, first: int, count: int, stream: bool
) -> Run:
    """Requests ``first`` .. ``first + count - 1`` with ``concurrency`` in flight (closed loop)."""
    run = Run()
    indices = iter(range(first, first + count))

    async def worker() -> None:
        for index in indices:
            try:
                await one_chat(client, model, index, stream, run)
            except httpx.HTTPError:
                run.errors += 1

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    run.elapsed = time.perf_counter() - started
    return run


async def compare(
    clients: dict[str, httpx.AsyncClient], concurrency: int, count: int, stream: bool,
    meter: CpuMeter,
) -> tuple[dict[str, Run], dict[str, dict]]:
    """Direct and gateway, ABBA, ``count`` requests each; the runs and the CPU used per target."""
    runs = {"direct": Run(), "gateway": Run()}
    cpu: dict[str, dict] = {}
    half = count // 2
    plan = [("direct", 0, half), ("gateway", 0, half), ("gateway", half, count - half),
            ("direct", half, count - half)]
    for target, first, size in plan:
        model = SERVED_BASE if target == "direct" else GATEWAY_MODEL
        before = meter.snapshot()
        runs[target].add(await chat_load(clients[target], model, concurrency, first, size, stream))
        used = CpuMeter.cores(before, meter.snapshot())
        cpu.setdefault(target, {})
        for name, value in used["seconds"].items():
            cpu[target][name] = cpu[target].get(name, 0.0) + value
    return runs, cpu


# ---------------------------------------------------------------- feedback load


class RawHttp:
    """One keep-alive HTTP/1.1 connection: POST JSON, read a Content-Length response."""

    def __init__(self, host: str, port: int) -> None:
        self._host, self._port = host, port
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def post(self, path: str, body: bytes) -> tuple[int, bytes]:
        if self._writer is None:
            self._reader, self._writer = await asyncio.open_connection(self._host, self._port)
        self._writer.write(
            b"POST %s HTTP/1.1\r\nhost: %s\r\ncontent-type: application/json\r\n"
            b"content-length: %d\r\n\r\n%s"
            % (path.encode(), self._host.encode(), len(body), body)
        )
        head = await self._reader.readuntil(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        status = int(lines[0].split()[1])
        length = 0
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        return status, await self._reader.readexactly(length)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()


def count_rows(events_db: Path, topic: str) -> int:
    """Events of ``topic`` in the embedded event log (0 before the drainer created it)."""
    try:
        connection = sqlite3.connect(f"file:{events_db}?mode=ro", uri=True, timeout=5)
        try:
            return connection.execute(
                "SELECT COUNT(*) FROM messages WHERE topic = ?", (topic,)
            ).fetchone()[0]
        finally:
            connection.close()
    except sqlite3.OperationalError:
        return 0


async def wait_for_rows(events_db: Path, topic: str, count: int, timeout_s: float) -> float:
    """Poll until the log holds ``count`` events of ``topic``; the perf_counter time it did."""
    deadline = time.perf_counter() + timeout_s
    while time.perf_counter() < deadline:
        if await asyncio.to_thread(count_rows, events_db, topic) >= count:
            return time.perf_counter()
        await asyncio.sleep(0.05)
    raise TimeoutError(f"the event log holds {count_rows(events_db, topic)} of {count} {topic} events")


@dataclass
class FeedbackResult:
    accepted: int
    stored: int
    """Of the accepted, how many the event log holds once delivery ended (or timed out)."""
    errors: int
    accept_s: float
    deliver_s: float
    """Until the event log held every accepted event; NaN if it never did (then ``stored`` is short)."""
    latencies: list[float]
    cpu: dict[str, float]


async def feedback_load(
    port: int, events_db: Path, ids: list[tuple[str, str]], count: int, concurrency: int,
    meter: CpuMeter,
) -> FeedbackResult:
    """POST ``count`` thumbs at ``concurrency``; time until all are accepted, and delivered."""
    bodies = [
        json.dumps({"completion_id": cid, "vote": "up" if i % 3 else "down", "user": user}).encode()
        for i, (cid, user) in zip(range(count), itertools.cycle(ids))
    ]
    already = count_rows(events_db, "feedback")
    latencies: list[float] = []
    errors = 0
    work = iter(bodies)

    async def worker() -> None:
        nonlocal errors
        connection = RawHttp("127.0.0.1", port)
        try:
            for body in work:
                started = time.perf_counter()
                status, _ = await connection.post("/v1/feedback", body)
                if status == 200:
                    latencies.append(time.perf_counter() - started)
                else:
                    errors += 1
        finally:
            connection.close()

    before = meter.snapshot()
    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    accepted_at = time.perf_counter()
    try:
        delivered_at = await wait_for_rows(events_db, "feedback", already + len(latencies), 120)
    except TimeoutError:
        delivered_at = float("nan")
    used = CpuMeter.cores(before, meter.snapshot())
    return FeedbackResult(
        accepted=len(latencies), stored=count_rows(events_db, "feedback") - already,
        errors=errors, accept_s=accepted_at - started,
        deliver_s=delivered_at - started, latencies=latencies, cpu=used,
    )


# ---------------------------------------------------------------- 1 vs 2 gateway workers


class HhhServe(ChildProcess):
    """`hhh serve` with ``workers`` gateway workers in front of ``engine_url``, in its own home."""

    def __init__(self, workers: int, engine_url: str, home: Path, signing_key: str) -> None:
        super().__init__(home / "serve.log")
        self.workers, self.home, self.port = workers, home, free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._environment = {
            **os.environ, "HHH_HOME": str(home), "HHH_GATEWAY_PORT": str(self.port),
            "HHH_GATEWAY_WORKERS": str(workers), "HHH_GATEWAY_ENGINE_URLS": json.dumps([engine_url]),
            "HHH_GATEWAY_SIGNING_KEY": signing_key,  # the chat phase's completion ids verify here
            "HHH_GATEWAY_SERVED_MODEL_NAME": GATEWAY_MODEL,
            # One load generator is one caller: the per-caller limits would measure themselves.
            "HHH_LIMITS_RATE_PER_S": "0", "HHH_LIMITS_CONCURRENT_PER_CALLER": "0",
        }

    def start(self) -> None:
        self.home.mkdir(parents=True, exist_ok=True)
        self.spawn([sys.executable, "-m", "hhh", "serve"], self._environment)

    def delivered_per_worker(self) -> list[float]:
        """Events each worker's outbox (``gateway-w<i>``) delivered so far, from ``/metrics``."""
        text = httpx.get(f"{self.url}/metrics", timeout=10).text
        return [sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                    if line.startswith("hhh_outbox_delivered_total{") and f'outbox="gateway-w{index}"' in line)
                for index in range(self.workers)]


@dataclass
class WorkersResult:
    """The feedback load against `hhh serve` with one worker count, its ABBA halves summed."""

    workers: int
    runs: list[FeedbackResult] = field(default_factory=list)
    shares: list[float] = field(default_factory=list)
    """Each worker's share of the events the workers' outboxes delivered (2 workers: the balance)."""

    def total(self, name: str) -> float:
        return sum(getattr(run, name) for run in self.runs)

    def cores(self, group: str) -> float:
        """Average cores ``group`` used over the runs (``others``: the rest of the machine)."""
        def seconds(run: FeedbackResult) -> float:
            used = run.cpu["seconds"]
            if group != "others":
                return used[group]
            return max(0.0, used["busy"] - used["vllm"] - used["gateway"] - used["loadgen"])
        return sum(seconds(run) for run in self.runs) / max(1e-9, self.total("deliver_s"))


async def workers_phase(
    args: argparse.Namespace, engine_url: str, engine_pid: int, ids: list[tuple[str, str]],
    signing_key: str, folder: Path,
) -> list[WorkersResult]:
    """The feedback load against `hhh serve` with 1 and with 2 workers, ABBA (1, 2, 2, 1)."""
    servers = {n: HhhServe(n, engine_url, folder / f"serve-{n}-workers", signing_key) for n in (1, 2)}
    results = {n: WorkersResult(n) for n in servers}
    try:
        for server in servers.values():
            server.start()
        for server in servers.values():
            await asyncio.to_thread(wait_until_ready, f"{server.url}/readyz", 120, lambda s=server: s.running)
        meters = {n: CpuMeter(engine_pid, server.pid) for n, server in servers.items()}
        for n, server in servers.items():  # warm-up: connections, code paths, SQLite files
            await feedback_load(server.port, server.home / "events.db", ids, 200, args.feedback_concurrency,
                                meters[n])
        for n in (1, 2, 2, 1):
            print(f"workers: {n} gateway worker(s), {args.workers_feedback // 2} thumbs at concurrency "
                  f"{args.feedback_concurrency} ...", flush=True)
            server = servers[n]
            results[n].runs.append(await feedback_load(
                server.port, server.home / "events.db", ids, args.workers_feedback // 2,
                args.feedback_concurrency, meters[n],
            ))
        delivered = servers[2].delivered_per_worker()
        results[2].shares = [count / max(1.0, sum(delivered)) for count in delivered]
    finally:
        for server in servers.values():
            server.stop()
    return list(results.values())


def report_workers(args: argparse.Namespace, results: list[WorkersResult]) -> None:
    """Print the 1-vs-2-workers table."""
    print(f"\nfeedback through `hhh serve`: POST /v1/feedback at concurrency {args.feedback_concurrency}, "
          f"{args.workers_feedback:,} thumbs per worker count (ABBA halves); {load_line()}\n")
    print("| gateway workers | accepted | stored | lost | accepted/s | delivered/s | ratio to 1 (≥1.7) "
          "| p50 ms | p99 ms | cores: gateway | load gen | others | share per worker |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    single = None
    for result in results:
        accepted, stored = int(result.total("accepted")), int(result.total("stored"))
        rate = accepted / result.total("accept_s")
        single = single or rate
        latencies = [latency for run in result.runs for latency in run.latencies]
        shares = " / ".join(f"{share:.0%}" for share in result.shares) or "—"
        ratio_cell = "1" if result.workers == 1 else f"{rate / single:.2f} {verdict(rate >= 1.7 * single)}"
        print(f"| {result.workers} | {accepted:,} | {stored:,} | {accepted - stored} {verdict(accepted == stored)} "
              f"| {rate:,.0f} | {accepted / result.total('deliver_s'):,.0f} | {ratio_cell} "
              f"| {pct(latencies, 50):.1f} | {pct(latencies, 99):.1f} | {result.cores('gateway'):.2f} "
              f"| {result.cores('loadgen'):.2f} | {result.cores('others'):.2f} | {shares} |")


# ---------------------------------------------------------------- the bench


@dataclass
class Results:
    """What the phases measured, for the report."""

    chat: list[tuple[int, dict[str, Run], dict[str, dict[str, float]], str]] = field(default_factory=list)
    stream: tuple[int, dict[str, Run], dict[str, dict[str, float]]] | None = None
    feedback: FeedbackResult | None = None
    feedback_load: str = ""
    ids: list[tuple[str, str]] = field(default_factory=list)
    """(completion id, user) of the gateway's chat completions, for the workers phase."""


async def bench(
    args: argparse.Namespace, engine_url: str, gateway_url: str, gateway_port: int,
    events_db: Path, meter: CpuMeter,
) -> Results:
    """Warm up, then the chat, stream and feedback phases."""
    most = max([*args.concurrency, args.stream_concurrency])
    limits = httpx.Limits(max_connections=most, max_keepalive_connections=most)
    clients = {
        "direct": httpx.AsyncClient(base_url=engine_url, limits=limits, timeout=300),
        "gateway": httpx.AsyncClient(base_url=gateway_url, limits=limits, timeout=300),
    }
    results = Results()
    gateway_chats = 0  # completion events the gateway will have logged
    ids: list[tuple[str, str]] = []
    try:
        print("warming up both targets ...", flush=True)
        for target, model in (("direct", SERVED_BASE), ("gateway", GATEWAY_MODEL)):
            for stream in (False, True):
                run = await chat_load(clients[target], model, 4, 10_000, 8, stream)
                if run.errors:
                    raise RuntimeError(f"warm-up against {target} failed ({run.errors} errors)")
                gateway_chats += len(run.latencies) if target == "gateway" else 0
        for concurrency in args.concurrency:
            print(f"chat: concurrency {concurrency}, {args.requests} requests per target ...",
                  flush=True)
            runs, cpu = await compare(clients, concurrency, args.requests, False, meter)
            gateway_chats += len(runs["gateway"].latencies)
            ids += runs["gateway"].ids
            results.chat.append((concurrency, runs, cpu, load_line()))
        if args.stream_requests:
            print(f"stream: concurrency {args.stream_concurrency}, {args.stream_requests} "
                  "requests per target ...", flush=True)
            runs, cpu = await compare(
                clients, args.stream_concurrency, args.stream_requests, True, meter
            )
            gateway_chats += len(runs["gateway"].latencies)
            results.stream = (args.stream_concurrency, runs, cpu)
    finally:
        for client in clients.values():
            await client.aclose()

    results.ids = ids
    # The completion events of the chat phases reach the log before feedback is timed.
    await wait_for_rows(events_db, "completions", gateway_chats, 120)
    if args.feedback and ids:
        print(f"feedback: {args.feedback} thumbs at concurrency {args.feedback_concurrency} ...",
              flush=True)
        await feedback_load(gateway_port, events_db, ids, 200, args.feedback_concurrency, meter)
        results.feedback = await feedback_load(
            gateway_port, events_db, ids, args.feedback, args.feedback_concurrency, meter
        )
        results.feedback_load = load_line()
    return results


def pct(values: list[float], q: float) -> float:
    """The ``q``-th percentile of ``values`` (seconds) in milliseconds."""
    return float(np.percentile(values, q)) * 1000 if values else float("nan")


def ratio(gateway: float, direct: float) -> str:
    return f"{gateway / direct:.3f}" if direct else "-"


def verdict(ok: bool) -> str:
    return "ok" if ok else "**MISS**"


def load_line() -> str:
    one, five, fifteen = os.getloadavg()
    return f"load average {one:.2f} {five:.2f} {fifteen:.2f} on {os.cpu_count()} cores"


def report(args: argparse.Namespace, results: Results) -> None:
    """Print the markdown tables."""
    print(f"\nmodel {args.model_path}, temperature 0, max_tokens {MAX_TOKENS}, non-streamed, "
          f"{args.requests} requests per target and concurrency (ABBA)\n")
    print("| concurrency | direct req/s | gateway req/s | ratio (≥0.95) | direct p50 ms "
          "| gateway p50 ms | ratio | direct p99 ms | gateway p99 ms | ratio (≤1.10) "
          "| errors d/g | tokens d/g |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for concurrency, runs, _, _ in results.chat:
        d, g = runs["direct"], runs["gateway"]
        d50, g50 = pct(d.latencies, 50), pct(g.latencies, 50)
        d99, g99 = pct(d.latencies, 99), pct(g.latencies, 99)
        print(f"| {concurrency} | {d.rate:.1f} | {g.rate:.1f} | {ratio(g.rate, d.rate)} "
              f"{verdict(g.rate >= 0.95 * d.rate)} | {d50:.0f} | {g50:.0f} | {ratio(g50, d50)} "
              f"| {d99:.0f} | {g99:.0f} | {ratio(g99, d99)} {verdict(g99 <= 1.10 * d99)} "
              f"| {d.errors}/{g.errors} | {d.completion_tokens}/{g.completion_tokens} |")

    print(f"\nCPU during the chat phases: cores busy on average (the machine has "
          f"{os.cpu_count()}; 'others' is everything not started by this bench)\n")
    print("| concurrency | target | vLLM | gateway | load generator | others "
          "| gateway CPU ms/req | load average after |")
    print("|---:|---|---:|---:|---:|---:|---:|---|")
    for concurrency, runs, cpu, load in results.chat:
        for target in ("direct", "gateway"):
            print(cpu_row(f"| {concurrency} | {target} |", cpu[target], runs[target])
                  + f" {load if target == 'gateway' else ''} |")

    if results.stream is not None:
        concurrency, runs, cpu = results.stream
        d, g = runs["direct"], runs["gateway"]
        print(f"\nstreamed, concurrency {concurrency}, {args.stream_requests} requests per "
              "target (TTFT: until the first chunk with content)\n")
        print("| target | req/s | TTFT p50 ms | TTFT p99 ms | total p50 ms | total p99 ms "
              "| errors | gateway CPU ms/req |")
        print("|---|---:|---:|---:|---:|---:|---:|---:|")
        for target, run in (("direct", d), ("gateway", g)):
            per_request = cpu[target]["gateway"] / max(1, len(run.latencies)) * 1000
            print(f"| {target} | {run.rate:.1f} | {pct(run.ttfts, 50):.0f} "
                  f"| {pct(run.ttfts, 99):.0f} | {pct(run.latencies, 50):.0f} "
                  f"| {pct(run.latencies, 99):.0f} | {run.errors} | {per_request:.2f} |")
        print(f"| gateway/direct | {ratio(g.rate, d.rate)} "
              f"| {ratio(pct(g.ttfts, 50), pct(d.ttfts, 50))} "
              f"| {ratio(pct(g.ttfts, 99), pct(d.ttfts, 99))} "
              f"| {ratio(pct(g.latencies, 50), pct(d.latencies, 50))} "
              f"| {ratio(pct(g.latencies, 99), pct(d.latencies, 99))} | | |")

    f = results.feedback
    if f is not None:
        accepted, delivered = f.accepted / f.accept_s, f.accepted / f.deliver_s
        print(f"\nfeedback: POST /v1/feedback at concurrency {args.feedback_concurrency}, "
              f"{f.accepted:,} accepted, {f.errors} refused; {results.feedback_load}\n")
        print("| accepted/s (durable in outbox) | delivered/s (in the event log) | p50 ms | p99 ms "
              "| log lag after last 200 | cores: gateway | load gen | vLLM | others "
              "| gateway CPU ms/event |")
        print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        print(f"| {accepted:,.0f} {verdict(accepted >= 2000)} "
              f"| {delivered:,.0f} {verdict(delivered >= 2000)} "
              f"| {pct(f.latencies, 50):.1f} | {pct(f.latencies, 99):.1f} "
              f"| {(f.deliver_s - f.accept_s) * 1000:.0f} ms | {f.cpu['gateway']:.2f} "
              f"| {f.cpu['loadgen']:.2f} | {f.cpu['vllm']:.2f} | {f.cpu['others']:.2f} "
              f"| {f.cpu['seconds']['gateway'] / max(1, f.accepted) * 1000:.2f} |")


def cpu_row(prefix: str, seconds: dict[str, float], run: Run) -> str:
    """Cores per group over ``run``'s wall time, and gateway CPU per request."""
    others = seconds["busy"] - seconds["vllm"] - seconds["gateway"] - seconds["loadgen"]
    cores = [seconds[name] / run.elapsed for name in ("vllm", "gateway", "loadgen")]
    cores.append(max(0.0, others) / run.elapsed)
    per_request = seconds["gateway"] / max(1, len(run.latencies)) * 1000
    return prefix + "".join(f" {value:.2f} |" for value in cores) + f" {per_request:.2f} |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="HF model folder (default: `hhh demo-model --variant tiny`)")
    parser.add_argument("--requests", type=int, default=300,
                        help="chat requests per target and concurrency")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--stream-requests", type=int, default=96, help="0: skip the streamed phase")
    parser.add_argument("--stream-concurrency", type=int, default=8)
    parser.add_argument("--feedback", type=int, default=4000, help="thumbs to post; 0: skip")
    parser.add_argument("--feedback-concurrency", type=int, default=32)
    parser.add_argument("--workers-feedback", type=int, default=8000,
                        help="thumbs per worker count in the 1-vs-2 gateway workers phase; 0: skip")
    parser.add_argument("--profile-gateway", metavar="FILE",
                        help="run the gateway under cProfile and write its stats to FILE "
                        "(slows the gateway: not for the numbers)")
    args = parser.parse_args()
    args.model_path = resolve_model(args.model)
    print(f"start: {load_line()}", flush=True)

    with tempfile.TemporaryDirectory(prefix="hhh-bench-serving-") as scratch:
        folder = Path(scratch)
        gateway_port = free_port()
        gateway_url = f"http://127.0.0.1:{gateway_port}"
        engine = EngineProcess(EngineConfig(model_dir=args.model_path, served_model_name=SERVED_BASE,
                                            log_path=folder / "vllm.log"))
        gateway = None
        try:
            engine.start()
            engine_url = engine.url
            print(f"starting vLLM on {engine_url} (log: {engine.config.log_path}) ...", flush=True)
            engine.wait_ready()
            signing_key = secrets.token_hex(32)
            gateway = multiprocessing.get_context("spawn").Process(
                target=serve_gateway, name="bench-gateway",
                args=(engine_url, str(folder), gateway_port, signing_key, args.profile_gateway),
            )
            gateway.start()
            wait_until_ready(f"{gateway_url}/readyz", 60, gateway.is_alive)
            meter = CpuMeter(engine.pid, gateway.pid)
            started = time.perf_counter()
            results = asyncio.run(
                bench(args, engine_url, gateway_url, gateway_port, folder / "events.db", meter)
            )
            report(args, results)
            if args.workers_feedback and results.ids:
                stop_gateway(gateway)  # idle, but not beside the workers phase
                workers = asyncio.run(
                    workers_phase(args, engine_url, engine.pid, results.ids, signing_key, folder)
                )
                report_workers(args, workers)
            print(f"\nthe phases took {time.perf_counter() - started:.0f} s (after the engine "
                  f"started); end: {load_line()}")
        finally:
            if gateway is not None:
                stop_gateway(gateway)
            engine.stop()


if __name__ == "__main__":
    main()
