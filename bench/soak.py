"""Fault and abuse soak: `hhh up` under steady chat and feedback load while faults are injected
one after another; requests served, 4xx/5xx, time to recover, and feedback accepted against
feedback stored in the trainer's dataset (0 lost, 0 counted twice).

    .venv/bin/python -m bench.soak [--model DIR] [--backend sqlite|kafka --broker-command CMD]
                                   [--users 6] [--steady-s 60] [--settle-s 30] [--faults ...]
                                   [--set NAME=VALUE ...]

The service is started as an operator starts it: ``hhh up --model DIR`` (gateway, supervised vLLM
engine, supervised trainer daemon) with ``HHH_HOME`` in a temporary folder, auth on (a key per
user, one for the flooder, one labeler key), the default limits. With ``--backend kafka`` the
soak starts the broker itself with ``--broker-command`` (``{port}`` in it is replaced by a free
port) and stops and restarts it for the ``broker_restarted`` fault.

Faults (``--faults``, in this order by default; see `FAULTS`):
  engine_core_killed   SIGKILL vLLM's engine-core process; its API server is left running
  engine_killed        SIGKILL vLLM's API server (and with it the engine)
  broker_restarted     (kafka) stop the broker, leave it down ``--outage-s``, start it again
  trainer_killed       SIGKILL the trainer daemon mid-round (just after a round's ingest)
  gateway_restarted    SIGTERM `hhh up` (as systemd or Kubernetes stop it), start it again on
                       the same HHH_HOME
  poison_messages      undecodable bytes written straight to every topic of the event log
  dotdot_user          an API key for user ``..`` (the service must refuse to start) and
                       requests whose ``user`` field is ``..`` (4xx)
  flood                one API key sends chats from ``--flood-concurrency`` threads for
                       ``--flood-s``: it must get 429 with Retry-After, the others go on

Per fault: recovery (s from the injection — for the broker, from its restart — until a chat is
served again and /readyz is 200), feedback flowing (s from then until a vote accepted after
it is in the dataset), and the
requests of the phase (the injection, the recovery and ``--settle-s`` of steady load) by
outcome. At the end the soak waits for the trainer to ingest everything and compares the
event ids the gateway accepted (2xx) with those in the dataset (`DatasetStore`): a retry with
the same Idempotency-Key has the same id, a changed vote a new one that supersedes the old.

The broker: Tansu (the test broker) keeps everything in memory, so a restart forgets topics,
offsets and data. Before stopping it the soak holds the load until the trainer stored
everything accepted and every completion served so far (what a real Kafka keeps on disk and a memory broker cannot), then
sends chats and votes through the outage: the gateway's outbox keeps them until the restarted broker
acknowledges them. The command that starts Tansu (tests/fixtures/tansu.py knows the binary):

    broker="$(.venv/bin/python -c 'from tests.fixtures.tansu import tansu_binary; print(tansu_binary())') \\
      broker --listener-url tcp://127.0.0.1:{port} --advertised-listener-url tcp://127.0.0.1:{port}"
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import httpx
import psutil

from bench.serving import resolve_model
from bench.soak_traffic import CHAT_MODEL, Traffic, flood
from common.processes import ChildProcess, free_port, wait_for_port
from streams.backends import open_event_log
from streams.codec import DEAD_LETTERS, TOPIC_SCHEMAS
from streams.config import EventLogSettings, KafkaSettings
from trainer.preferences.store import DatasetStore

READY_TIMEOUT_S = 600.0
"""The longest `hhh up` (or a restarted engine) may take to be ready on a busy machine."""
RECOVERY_TIMEOUT_S = 600.0
"""The longest a fault's recovery (or its feedback flowing again) is waited for: then "—"."""
POISON = b"\xff\xfe not an event"
"""What the poison fault writes to every topic: no codec decodes it."""


@dataclass
class SoakSettings:
    """What to run (the command-line options)."""

    model_dir: Path
    home: Path
    """HHH_HOME of the service (a temporary folder)."""
    backend: Literal["sqlite", "kafka"] = "sqlite"
    broker_command: str | None = None
    """Kafka: the shell command that starts a Kafka-protocol broker on ``{port}``."""
    users: int = 4
    """Ordinary users, each with an API key of their own (besides the labeler and the flooder)."""
    steady_s: float = 30.0
    """Steady load before the first fault (the ``steady`` row)."""
    settle_s: float = 15.0
    """Steady load after each fault's recovery, counted in its row."""
    outage_s: float = 10.0
    """How long the broker stays down."""
    flood_s: float = 10.0
    """How long the flooder floods."""
    flood_concurrency: int = 32
    """The flooder's requests in flight at once (the shipped limit allows 16)."""
    think_s: float = 0.3
    """Each user's pause between two chats."""
    rate_per_s: float | None = None
    """``HHH_LIMITS_RATE_PER_S`` of the service (None: the default, 20/s)."""
    burst: int | None = None
    """``HHH_LIMITS_BURST`` of the service (None: the default, 100)."""
    ingest_timeout_s: float = 600.0
    """The longest the end waits for the trainer to store everything accepted."""
    environment: dict[str, str] = field(default_factory=dict)
    """More settings for `hhh up` (tests keep the trainer to ingest: no reward model)."""


@dataclass
class PhaseResult:
    """One row of the table."""

    name: str
    recovery_s: float | None
    """Until a chat was served again and /readyz answered 200 (None: not recovered)."""
    feedback_flowing_s: float | None
    """Until a vote accepted after the injection was in the dataset (None: none was)."""
    counts: Counter[str]
    """HTTP attempts of the phase by ``<kind>:<outcome>`` (`bench.soak_traffic.Tally`)."""
    notes: list[str] = field(default_factory=list)


@dataclass
class Accounting:
    """Feedback the gateway accepted against what the trainer's dataset holds."""

    accepted: int
    stored: int
    lost: int
    """Accepted (2xx) and not in the dataset."""
    unexpected: int
    """In the dataset and never accepted: a retry stored twice, or an event nobody sent."""
    latest_vote_mismatches: int
    """Targets whose latest vote in the dataset is not the one the user sent last."""
    completions_missing: int
    """Chat answers the users were served whose completion event is not in the dataset."""


@dataclass
class SoakReport:
    """Everything the soak measured."""

    settings: SoakSettings
    phases: list[PhaseResult]
    accounting: Accounting
    ledger_notes: Counter[str]
    duration_s: float


# ---------------------------------------------------------------- the service and the broker


class Service(ChildProcess):
    """`hhh up --model DIR` on a fixed port, its output appended to ``<home>/up.log``."""

    def __init__(self, settings: SoakSettings, environment: dict[str, str]) -> None:
        super().__init__(settings.home / "up.log")
        self.settings = settings
        self.environment = environment
        self.url = f"http://127.0.0.1:{environment['HHH_GATEWAY_PORT']}"

    def start(self) -> None:
        self.spawn([sys.executable, "-m", "hhh", "up", "--model", str(self.settings.model_dir)],
                   self.environment)

    def wait_ready(self, timeout_s: float = READY_TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout_s
        while not ready(self.url):
            if not self.running:
                raise RuntimeError(f"hhh up exited with {self.returncode}:\n{self.log_tail(30)}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"hhh up not ready after {timeout_s:.0f} s:\n{self.log_tail(30)}")
            time.sleep(0.2)

    def terminate_and_wait(self) -> None:
        """SIGTERM `hhh up` itself, as systemd, Docker and Kubernetes do; wait until its
        whole group is gone."""
        assert self.pid is not None
        os.kill(self.pid, signal.SIGTERM)
        deadline = time.monotonic() + 90
        while self.running and time.monotonic() < deadline:  # its own shutdown, not a second signal
            time.sleep(0.1)
        self.stop(timeout=30)

    def child(self, command: str) -> psutil.Process:
        """The child process whose command line contains ``command``."""
        assert self.pid is not None
        for process in psutil.Process(self.pid).children():
            if command in " ".join(process.cmdline()):
                return process
        raise LookupError(f"hhh up has no child running {command!r}")

    def engine_api_server(self) -> psutil.Process:
        return self.child("vllm.entrypoints.openai.api_server")

    def engine_core(self) -> psutil.Process:
        """vLLM's engine core (it names itself ``VLLM::EngineCore``) under its API server."""
        for process in self.engine_api_server().children(recursive=True):
            if "EngineCore" in process.name() or "EngineCore" in " ".join(process.cmdline()):
                return process
        raise LookupError("the engine's API server has no engine-core child")

    def trainer(self) -> psutil.Process:
        return self.child("-m hhh train")


class Broker(ChildProcess):
    """The Kafka-protocol broker ``command`` starts, on one port for its whole life."""

    def __init__(self, command: str, log_path: Path) -> None:
        super().__init__(log_path)
        self.port = free_port()
        self.command = shlex.split(command.replace("{port}", str(self.port)))

    def start(self) -> None:
        self.spawn(self.command)
        wait_for_port(self.port, self, 30)


def progress(line: str) -> None:
    print(f"{time.strftime('%H:%M:%S')} soak: {line}", file=sys.stderr, flush=True)


def ready(url: str) -> bool:
    try:
        return httpx.get(f"{url}/readyz", timeout=5).status_code == 200
    except httpx.TransportError:
        return False


def service_environment(settings: SoakSettings, keys: dict[str, dict], broker: Broker | None) -> dict[str, str]:
    """The environment of `hhh up`: auth with ``keys``, a round every second, engine checks
    every 0.5 s (a restart after 10 s unhealthy), Kafka group sessions of 3 s (Tansu holds a
    join for half of it)."""
    keys_file = settings.home / "api-keys.json"
    keys_file.write_text(json.dumps(keys))
    keys_file.chmod(0o600)
    environment = {
        **os.environ, "HHH_HOME": str(settings.home), "HHH_GATEWAY_PORT": str(free_port()),
        "HHH_GATEWAY_AUTH": "true", "HHH_GATEWAY_API_KEYS_FILE": str(keys_file),
        "HHH_GATEWAY_HEALTH_INTERVAL_S": "0.5", "HHH_GATEWAY_ENGINE_RESTART_AFTER_S": "10",
        "HHH_TRAINER_ROUND_INTERVAL_S": "1", "HHH_TRAINER_METRICS_PORT": str(free_port()),
        "HHH_EVENTS_BACKEND": settings.backend, **settings.environment,
    }
    for name, value in (("HHH_LIMITS_RATE_PER_S", settings.rate_per_s), ("HHH_LIMITS_BURST", settings.burst)):
        if value is not None:
            environment[name] = str(value)
    if broker is not None:
        environment |= {"HHH_KAFKA_BOOTSTRAP_SERVERS": f"127.0.0.1:{broker.port}",
                        "HHH_KAFKA_TOPIC_PREFIX": f"soak{uuid.uuid4().hex[:6]}.",
                        "HHH_KAFKA_SESSION_TIMEOUT_MS": "3000", "HHH_KAFKA_HEARTBEAT_INTERVAL_MS": "1000"}
    return environment


# ---------------------------------------------------------------- the soak


class Soak:
    """One service under load, the faults injected into it, and what was measured."""

    def __init__(self, settings: SoakSettings) -> None:
        self.settings = settings
        self.keys = {f"soak-user-{i}": secrets.token_urlsafe(24) for i in range(settings.users)}
        self.flooder_key = secrets.token_urlsafe(24)
        self.labeler_key = secrets.token_urlsafe(24)
        self.probe_key = secrets.token_urlsafe(24)
        table = {key: {"user": user} for user, key in self.keys.items()}
        table |= {self.flooder_key: {"user": "soak-flooder"}, self.probe_key: {"user": "soak-probe"},
                  self.labeler_key: {"user": "soak-labeler", "roles": ["labeler"]}}
        if settings.backend == "kafka" and not settings.broker_command:
            raise ValueError("--backend kafka needs --broker-command")
        self.broker = (Broker(settings.broker_command, settings.home / "broker.log")
                       if settings.broker_command and settings.backend == "kafka" else None)
        settings.home.mkdir(parents=True, exist_ok=True)
        self.service = Service(settings, service_environment(settings, table, self.broker))
        self.traffic = Traffic(self.service.url, self.keys, self.labeler_key, think_s=settings.think_s)
        self.phases: list[PhaseResult] = []
        self.injected_at = time.monotonic()
        """When the current fault struck: recovery is timed from here."""

    def run(self, faults: list[str]) -> SoakReport:
        """Start everything, the steady phase, each fault in turn, the accounting; stop."""
        started = time.monotonic()
        if self.broker is not None:
            self.broker.start()
        self.service.start()
        try:
            progress(f"hhh up starting (HHH_HOME {self.settings.home})")
            self.service.wait_ready()
            progress("ready; steady load")
            self.traffic.start()
            before, steady_from = self.traffic.tally.snapshot(), time.monotonic()
            time.sleep(self.settings.steady_s)
            self.phases.append(PhaseResult("steady", 0.0, self._feedback_flowing(steady_from),
                                           self.traffic.tally.snapshot() - before))
            for fault in faults:
                self._phase(fault, FAULTS[fault])
            progress("load stopped; waiting for the trainer to ingest everything accepted")
            self.traffic.stop()
            accounting = self.wait_until_ingested(self.settings.ingest_timeout_s)
        finally:
            self.traffic.stop()
            self.service.stop(timeout=90)
            if self.broker is not None:
                self.broker.stop()
        return SoakReport(self.settings, self.phases, accounting, Counter(self.traffic.ledger.notes),
                          time.monotonic() - started)

    def mark_injected(self) -> None:
        """Note that the fault strikes now (a fault that first waits for its moment calls it)."""
        self.injected_at = time.monotonic()

    def _phase(self, name: str, inject: Callable[[Soak], list[str]]) -> None:
        progress(f"{name}: injecting")
        before = self.traffic.tally.snapshot()
        self.mark_injected()
        notes = inject(self)
        recovery = self._recovery(self.injected_at)
        flowing = self._feedback_flowing(self.injected_at)
        progress(f"{name}: recovered in {_seconds(recovery)} s, feedback flowing after {_seconds(flowing)} s")
        time.sleep(self.settings.settle_s)
        self.phases.append(PhaseResult(name, recovery, flowing, self.traffic.tally.snapshot() - before, notes))

    def _recovery(self, since: float) -> float | None:
        """Seconds from ``since`` until a chat (as a probe user) is served and /readyz is 200."""
        deadline = since + RECOVERY_TIMEOUT_S
        with httpx.Client(base_url=self.service.url, timeout=60,
                          headers={"authorization": f"Bearer {self.probe_key}"}) as http:
            while time.monotonic() < deadline:
                try:
                    served = http.post("/v1/chat/completions", json={
                        "model": CHAT_MODEL, "messages": [{"role": "user", "content": "probe"}],
                        "max_tokens": 2}).status_code == 200
                    if served and http.get("/readyz").status_code == 200:
                        return time.monotonic() - since
                except httpx.TransportError:
                    pass
                time.sleep(0.25)
        return None

    def _feedback_flowing(self, since: float) -> float | None:
        """Seconds from ``since`` until a vote accepted after it is in the dataset."""
        deadline = since + RECOVERY_TIMEOUT_S
        while time.monotonic() < deadline:
            fresh = self.traffic.ledger.accepted_since(since)
            if fresh and fresh & self.stored_feedback():
                return time.monotonic() - since
            time.sleep(0.5)
        return None

    def stored_feedback(self) -> set[str]:
        """The feedback event ids in the trainer's dataset now."""
        return self._dataset()[0]

    def _dataset(self, served: Collection[str] = ()) -> tuple[set[str], dict[tuple[str, str, str], str], set[str]]:
        """The dataset's feedback event ids, its latest vote per (user, completion, criterion)
        for the votes whose completion it holds, and which of the ``served`` completions it holds."""
        path = self.settings.home / "dataset.db"
        if not path.exists():
            return set(), {}, set()
        store = DatasetStore(path)
        try:
            return store.feedback_event_ids(), {
                (v.user_id, v.completion_id, v.criterion): "up" if v.up else "down"
                for v in store.votes(eval_percent=0)}, set(store.completion_texts(served))
        finally:
            store.close()

    def _compare(self) -> Accounting:
        ledger = self.traffic.ledger
        accepted, served = ledger.event_ids(), ledger.completions()
        stored, latest, completions = self._dataset(served)
        mismatches = sum(latest.get(target) != vote for target, vote in ledger.latest_votes().items())
        return Accounting(len(accepted), len(stored), len(accepted - stored), len(stored - accepted),
                          mismatches, len(served - completions))

    def wait_until_ingested(self, timeout_s: float) -> Accounting:
        """Wait until the dataset holds every accepted vote and ranking and every served
        completion, and shows each user's last vote, or ``timeout_s``; the comparison then."""
        deadline = time.monotonic() + timeout_s
        while ((accounting := self._compare()).lost or accounting.latest_vote_mismatches
               or accounting.completions_missing):
            if time.monotonic() > deadline:
                break
            time.sleep(1)
        return accounting

    def event_log_settings(self) -> tuple[EventLogSettings, KafkaSettings | None]:
        """How to reach the service's event log from here (the soak's own outbox path unused)."""
        environment = self.service.environment
        events = EventLogSettings(backend=self.settings.backend, sqlite_path=self.settings.home / "events.db",
                                  outbox_path=self.settings.home / "soak-outbox.db")
        if self.broker is None:
            return events, None
        return events, KafkaSettings(bootstrap_servers=environment["HHH_KAFKA_BOOTSTRAP_SERVERS"],
                                     topic_prefix=environment["HHH_KAFKA_TOPIC_PREFIX"])


# ---------------------------------------------------------------- the faults


def kill_engine_core(soak: Soak) -> list[str]:
    soak.service.engine_core().send_signal(signal.SIGKILL)
    return []


def kill_engine(soak: Soak) -> list[str]:
    soak.service.engine_api_server().send_signal(signal.SIGKILL)
    return []


def restart_broker(soak: Soak) -> list[str]:
    """The load held until the trainer stored everything (a memory broker forgets what it
    holds), the broker stopped, the load sent into the outage (the outbox keeps it), the
    broker started again after ``outage_s``."""
    if soak.broker is None:
        return ["skipped: the embedded event log has no broker"]
    soak.traffic.hold()
    before = soak.wait_until_ingested(soak.settings.ingest_timeout_s)
    soak.broker.stop()
    soak.traffic.release()
    time.sleep(soak.settings.outage_s)
    soak.broker.start()
    soak.mark_injected()  # recovery: from the restart (the outage itself lasts outage_s)
    notes = [f"down {soak.settings.outage_s:.0f} s (memory storage: topics, offsets, groups gone)"]
    if before.lost or before.latest_vote_mismatches or before.completions_missing:
        notes.append(f"not yet ingested when it stopped: {before.lost} votes, "
                     f"{before.completions_missing} completions")
    return notes


def kill_trainer_mid_round(soak: Soak) -> list[str]:
    """SIGKILL the trainer just after a round logged its ingest (it is in the round then)."""
    log = soak.settings.home / "trainer.log"

    def ingests() -> int:
        return log.read_text(errors="replace").count(" new events") if log.exists() else 0

    seen = ingests()
    deadline = time.monotonic() + RECOVERY_TIMEOUT_S
    while ingests() == seen and time.monotonic() < deadline:
        time.sleep(0.1)
    trainer = soak.service.trainer()
    soak.mark_injected()
    trainer.send_signal(signal.SIGKILL)
    return [f"killed pid {trainer.pid} after round ingest #{seen + 1}"]


def restart_gateway(soak: Soak) -> list[str]:
    soak.service.terminate_and_wait()
    soak.service.start()
    return []


def poison_every_topic(soak: Soak) -> list[str]:
    """Raw undecodable bytes on every topic; the consumers must dead-letter them and go on."""
    events, kafka = soak.event_log_settings()
    with open_event_log(events, kafka) as event_log:
        for topic in TOPIC_SCHEMAS:
            event_log.publish_bytes(topic, "soak-poison", POISON)
        event_log.flush()
    soak.mark_injected()
    return [f"dead-lettered: {dead_letters(soak) or 'none yet'}"]


def dead_letters(soak: Soak, wait_s: float = 30.0) -> dict[str, int]:
    """Dead letters by source topic, once those of the consumed topics are there (or ``wait_s``)."""
    events, kafka = soak.event_log_settings()
    consumed = {"completions", "feedback", "adapters"}
    deadline = time.monotonic() + wait_s
    found: Counter[str] = Counter()
    with open_event_log(events, kafka) as event_log, \
            event_log.consumer(None, [DEAD_LETTERS], from_beginning=True) as reader:
        while time.monotonic() < deadline and not consumed <= set(found):
            for record in reader.poll_batch(max_records=500, timeout_s=1.0).records:
                found[record.event.source_topic] += 1
    return dict(found)


def dotdot_user(soak: Soak) -> list[str]:
    """A key for ``..`` refused at start; ``user: ".."`` in a body refused with a 4xx."""
    with tempfile.TemporaryDirectory() as home:
        refused = subprocess.run(
            [sys.executable, "-m", "hhh", "serve"], capture_output=True, text=True, timeout=120,
            env={**os.environ, "HHH_HOME": home, "HHH_GATEWAY_AUTH": "true",
                 "HHH_GATEWAY_API_KEYS": json.dumps({secrets.token_urlsafe(24): {"user": ".."}}),
                 "HHH_GATEWAY_ENGINE_URLS": f'["http://127.0.0.1:{free_port()}"]',
                 "HHH_GATEWAY_PORT": str(free_port())})
    notes = [f"`hhh serve` with a key for '..': exit {refused.returncode}"]
    headers = {"authorization": f"Bearer {soak.probe_key}"}
    for path, body in (("/v1/chat/completions", {"model": CHAT_MODEL, "max_tokens": 2, "user": "..",
                                                 "messages": [{"role": "user", "content": "hi"}]}),
                       ("/v1/feedback", {"completion_id": "x" * 40, "vote": "up", "user": ".."})):
        status = httpx.post(f"{soak.service.url}{path}", json=body, headers=headers, timeout=60).status_code
        soak.traffic.tally.count("abuse", status)
        notes.append(f"{path} with user '..': {status}")
    soak.mark_injected()  # nothing to recover from: the service must simply go on
    return notes


def flood_from_one_key(soak: Soak) -> list[str]:
    tally = soak.traffic.tally
    before, started = tally.snapshot(), time.monotonic()
    flood(soak.service.url, soak.flooder_key, tally, seconds=soak.settings.flood_s,
          concurrency=soak.settings.flood_concurrency)
    during = tally.snapshot() - before
    p99_before = tally.chat_p99_s(started - soak.settings.flood_s - soak.settings.settle_s, started)
    p99_during = tally.chat_p99_s(started, time.monotonic())
    soak.mark_injected()  # recovery: from the end of the flood
    return [f"flooder: {during['flood:2xx']} served, {during['flood:429']} got 429 "
            f"({tally.retry_after_missing} without Retry-After); others' chat p99 "
            f"{_seconds(p99_before)} before, {_seconds(p99_during)} during"]


FAULTS: dict[str, Callable[[Soak], list[str]]] = {
    "engine_core_killed": kill_engine_core,
    "engine_killed": kill_engine,
    "broker_restarted": restart_broker,
    "trainer_killed": kill_trainer_mid_round,
    "gateway_restarted": restart_gateway,
    "poison_messages": poison_every_topic,
    "dotdot_user": dotdot_user,
    "flood": flood_from_one_key,
}
"""Each fault: inject it into the soak's service (returns notes for the table), in table order."""


# ---------------------------------------------------------------- the report


def _seconds(value: float | None) -> str:
    return "—" if value is None else f"{value:.1f}"


def format_report(report: SoakReport) -> str:
    """The markdown table of the phases and the feedback accounting."""
    lines = ["| fault | recovery s | feedback flowing s | chats served | chat 4xx (429) | chat 5xx | "
             "chat no answer | feedback 2xx | feedback 4xx (429) | feedback 5xx | feedback no answer | notes |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    total: Counter[str] = Counter()
    for phase in report.phases:
        c = phase.counts
        total += c
        lines.append(
            f"| {phase.name} | {_seconds(phase.recovery_s)} | {_seconds(phase.feedback_flowing_s)} | "
            f"{c['chat:2xx']} | {c['chat:4xx'] + c['chat:429']} ({c['chat:429']}) | {c['chat:5xx']} | "
            f"{c['chat:transport']} | {c['feedback:2xx']} | {c['feedback:4xx'] + c['feedback:429']} "
            f"({c['feedback:429']}) | {c['feedback:5xx']} | {c['feedback:transport']} | "
            f"{'; '.join(phase.notes)} |")
    a = report.accounting
    lines += ["", f"Backend {report.settings.backend}, {report.settings.users} users, "
              f"{report.duration_s / 60:.1f} min. Requests: {total['chat:2xx']} chats served, "
              f"{sum(v for k, v in total.items() if k.endswith(('4xx', '429')))} 4xx "
              f"({sum(v for k, v in total.items() if k.endswith('429'))} of them 429), "
              f"{sum(v for k, v in total.items() if k.endswith('5xx'))} 5xx, "
              f"{sum(v for k, v in total.items() if k.endswith('transport'))} without an answer.",
              "", "| feedback accepted (event ids) | stored in the dataset | lost | counted twice or unknown "
              "| latest vote wrong | completions served, not stored | retries with the same key | changed votes |",
              "|---:|---:|---:|---:|---:|---:|---:|---:|",
              f"| {a.accepted} | {a.stored} | {a.lost} | {a.unexpected} | {a.latest_vote_mismatches} | "
              f"{a.completions_missing} | {report.ledger_notes['retries_with_same_key']} | "
              f"{report.ledger_notes['changed_votes']} |"]
    odd = {k: v for k, v in report.ledger_notes.items()
           if k.startswith(("refused", "unresolved", "retries_given"))}
    if odd:
        lines += ["", f"Feedback the harness did not get accepted: {odd}"]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    parser.add_argument("--model", type=Path, default=None,
                        help="model folder `hhh up` serves (default: the tiny demo model, built if missing)")
    parser.add_argument("--backend", choices=["sqlite", "kafka"], default="sqlite",
                        help="the event log (default: %(default)s, the embedded one)")
    parser.add_argument("--broker-command", default=None,
                        help="kafka: shell command that starts a Kafka-protocol broker on {port}")
    parser.add_argument("--users", type=int, default=6, help="users chatting and voting (default: %(default)s)")
    parser.add_argument("--steady-s", type=float, default=60.0,
                        help="steady load before the first fault (default: %(default)s)")
    parser.add_argument("--settle-s", type=float, default=30.0,
                        help="steady load after each fault's recovery (default: %(default)s)")
    parser.add_argument("--outage-s", type=float, default=15.0,
                        help="how long the broker stays down (default: %(default)s)")
    parser.add_argument("--flood-s", type=float, default=20.0, help="how long the flood lasts (default: %(default)s)")
    parser.add_argument("--flood-concurrency", type=int, default=32,
                        help="the flooder's requests in flight (default: %(default)s)")
    parser.add_argument("--rate-per-s", type=float, default=None,
                        help="HHH_LIMITS_RATE_PER_S of the service (default: the shipped 20/s)")
    parser.add_argument("--burst", type=int, default=None,
                        help="HHH_LIMITS_BURST of the service (default: the shipped 100)")
    parser.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                        help="a setting of `hhh up` (repeatable), e.g. HHH_REWARD_MIN_TRAIN_PAIRS=1000000000 "
                        "for a trainer that only ingests (quick runs)")
    parser.add_argument("--faults", nargs="+", choices=list(FAULTS), default=list(FAULTS))
    parser.add_argument("--keep-home", action="store_true", help="keep HHH_HOME (logs, dataset) after")
    args = parser.parse_args()
    model_dir = resolve_model(str(args.model) if args.model else None)
    faults = [f for f in args.faults if args.backend == "kafka" or f != "broker_restarted"]
    home = Path(tempfile.mkdtemp(prefix="hhh-soak-"))
    settings = SoakSettings(model_dir=model_dir, home=home, backend=args.backend,
                            broker_command=args.broker_command, users=args.users, steady_s=args.steady_s,
                            settle_s=args.settle_s, outage_s=args.outage_s, flood_s=args.flood_s,
                            flood_concurrency=args.flood_concurrency, rate_per_s=args.rate_per_s,
                            burst=args.burst, environment=dict(item.split("=", 1) for item in args.set))
    report = Soak(settings).run(faults)
    print(format_report(report))
    print(f"\n(HHH_HOME: {home}{'' if args.keep_home else ', removed'})")
    if not args.keep_home:
        shutil.rmtree(home, ignore_errors=True)
    accounting = report.accounting
    if accounting.lost or accounting.unexpected or accounting.latest_vote_mismatches or accounting.completions_missing:
        sys.exit("feedback was lost or counted twice: see the last table")


if __name__ == "__main__":
    main()
