"""Feedback identity over real HTTP: a retry is one event, a change is a new one, changing back works.

The gateways here have no live engine (feedback needs none): completion ids are minted with
the gateways' signing key, their completion events published to the log as chat would.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from serving.completion_ids import CompletionClaim, CompletionIdSigner
from serving.metrics import feedback_adapter_label
from streams.codec import COMPLETIONS
from streams.events import AdapterRef, ChatMessage, CompletionEvent, SamplingParams
from streams.sqlite_log import SqliteEventLog
from common.processes import free_port
from tests.fixtures.gateway import API_KEYS, HASHED_KEY, RunningGateway, start_gateway
from trainer.preferences.ingest import ingest_available
from trainer.preferences.store import DatasetStore

SIGNING_KEY = "test-signing-key-" + "0" * 32  # what start_gateway configures
_prompts = iter(range(1_000_000))


@pytest.fixture(scope="module")
def replicas(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[RunningGateway, RunningGateway]]:
    """Two gateway replicas (one signing key, auth on, one event log) before a dead engine."""
    dead_engine = f"http://127.0.0.1:{free_port()}"
    event_log_path = tmp_path_factory.mktemp("log") / "events.db"
    running = [
        start_gateway(dead_engine, tmp_path_factory.mktemp(f"replica-{i}"), ready_path="/healthz",
                      event_log_path=event_log_path, auth=True, api_keys=API_KEYS)
        for i in range(2)
    ]
    yield running[0], running[1]
    for gateway in running:
        gateway.stop()


def completions(gateway: RunningGateway, count: int, user: str = "alice") -> list[str]:
    """``count`` completion ids of one new prompt served to ``user``, logged as chat logs them."""
    prompt_id = f"prompt-{next(_prompts)}"
    signer = CompletionIdSigner(SIGNING_KEY.encode("utf-8"))
    ids = [signer.sign(CompletionClaim(user, prompt_id, "req", i, AdapterRef(scope="base")))
           for i in range(count)]
    with SqliteEventLog(gateway.event_log_path) as event_log:
        for index, completion_id in enumerate(ids):
            event_log.publish(COMPLETIONS, prompt_id, CompletionEvent(
                completion_id=completion_id, request_id="req", prompt_id=prompt_id, user_id=user,
                messages=[ChatMessage(role="user", content=prompt_id)], completion=f"answer {index}",
                choice_index=index, adapter=AdapterRef(scope="base"), model="hhh",
                sampling=SamplingParams(), prompt_tokens=1, completion_tokens=1, latency_ms=1.0,
            ))
    return ids


def post(gateway: RunningGateway, path: str, body: dict, key: str | None = None,
         api_key: str = "sk-alice") -> httpx.Response:
    headers = {"authorization": f"Bearer {api_key}"}
    if key is not None:
        headers["idempotency-key"] = key
    return httpx.post(f"{gateway.url}{path}", json=body, headers=headers, timeout=30)


def event_id(response: httpx.Response) -> str:
    assert response.status_code == 200, response.text
    return response.json()["event_id"]


def dataset(replicas: tuple[RunningGateway, ...], tmp_path: Path) -> DatasetStore:
    """The trainer's dataset, ingested from the replicas' log once their outboxes are empty."""
    deadline = time.monotonic() + 20
    while any(replica.gateway.outbox.depth() for replica in replicas):
        assert time.monotonic() < deadline, "the outboxes were not drained"
        time.sleep(0.05)
    store = DatasetStore(tmp_path / "dataset.db")
    with SqliteEventLog(replicas[0].event_log_path) as event_log:
        ingest_available(event_log, store, group=f"test-{uuid.uuid4().hex}", from_beginning=True,
                         idle_s=0.2)
    return store


def pairs_among(store: DatasetStore, *completion_ids: str) -> list:
    """The pairs between ``completion_ids`` (other tests' feedback is in the log too)."""
    return [p for p in store.build_pairs().pairs if {p.chosen_id, p.rejected_id} <= set(completion_ids)]


def test_a_vote_changed_back_is_a_new_event_and_counts_once(
    replicas: tuple[RunningGateway, RunningGateway], tmp_path: Path
) -> None:
    gateway = replicas[0]
    a, b = completions(gateway, 2)
    votes = [event_id(post(gateway, "/v1/feedback", {"completion_id": a, "vote": v}))
             for v in ("up", "down", "up")]
    retried = event_id(post(gateway, "/v1/feedback", {"completion_id": a, "vote": "up"}))
    other = event_id(post(gateway, "/v1/feedback", {"completion_id": b, "vote": "down"}))

    assert len(set(votes)) == 3  # each change is a new event, changing back too
    assert retried == votes[2]  # a retry of the latest vote is that same event
    assert other not in votes
    pairs = pairs_among(dataset(replicas, tmp_path), a, b)
    assert [(p.chosen_id, p.rejected_id, p.source, p.weight) for p in pairs] == [(a, b, "thumbs", 1.0)]


def test_a_vote_changed_back_across_replicas_counts_as_the_last_one(
    replicas: tuple[RunningGateway, RunningGateway], tmp_path: Path
) -> None:
    first, second = replicas
    a, b = completions(first, 2)
    up = event_id(post(first, "/v1/feedback", {"completion_id": a, "vote": "up"}))
    down = event_id(post(second, "/v1/feedback", {"completion_id": a, "vote": "down"}))
    up_again = event_id(post(first, "/v1/feedback", {"completion_id": a, "vote": "up"}))
    post(second, "/v1/feedback", {"completion_id": b, "vote": "down"})

    assert up_again == up != down  # the first replica never saw the down: to it, a retry
    pairs = pairs_among(dataset(replicas, tmp_path), a, b)
    assert [(p.chosen_id, p.rejected_id, p.source) for p in pairs] == [(a, b, "thumbs")]


def test_a_ranking_changed_back_is_a_new_event_and_counts_once(
    replicas: tuple[RunningGateway, RunningGateway], tmp_path: Path
) -> None:
    gateway = replicas[0]
    a, b, c = completions(gateway, 3)
    orders = ([a, b, c], [c, b, a], [a, b, c])
    rankings = [event_id(post(gateway, "/v1/rankings", {"ranking": order})) for order in orders]
    retried = event_id(post(gateway, "/v1/rankings", {"ranking": orders[-1]}))

    assert len(set(rankings)) == 3 and retried == rankings[2]
    pairs = pairs_among(dataset(replicas, tmp_path), a, b, c)
    assert sorted((p.chosen_id, p.rejected_id) for p in pairs) == sorted([(a, b), (a, c), (b, c)])
    assert {(p.source, p.labelers, p.weight) for p in pairs} == {("ranking", ("alice",), 1.0)}


def test_an_idempotency_key_makes_retries_one_event_on_every_replica(
    replicas: tuple[RunningGateway, RunningGateway],
) -> None:
    first, second = replicas
    (a,) = completions(first, 1)
    up = {"completion_id": a, "vote": "up"}
    original = event_id(post(first, "/v1/feedback", up, key="vote-1"))
    assert event_id(post(first, "/v1/feedback", up, key="vote-1")) == original
    assert event_id(post(second, "/v1/feedback", up, key="vote-1")) == original  # another replica
    down = event_id(post(second, "/v1/feedback", {**up, "vote": "down"}, key="vote-2"))
    back_up = event_id(post(first, "/v1/feedback", up, key="vote-3"))
    assert len({original, down, back_up}) == 3
    # Another caller's request with the same key is another event.
    bob = completions(first, 1, user="bob")[0]
    lena = event_id(post(first, "/v1/feedback", {"completion_id": bob, "vote": "up"}, key="vote-1",
                         api_key="sk-labeler"))
    assert lena not in {original, down, back_up}


@pytest.mark.parametrize("key", ["has space", "x" * 256, "naïve"])
def test_a_malformed_idempotency_key_is_refused_with_what_to_fix(
    replicas: tuple[RunningGateway, RunningGateway], key: str
) -> None:
    (a,) = completions(replicas[0], 1)
    response = httpx.post(
        f"{replicas[0].url}/v1/feedback", json={"completion_id": a, "vote": "up"},
        headers={"authorization": "Bearer sk-alice", "idempotency-key": key.encode("utf-8")},
    )
    assert response.status_code == 400, response.text
    assert "Idempotency-Key must be 1-255 visible ASCII characters" in response.json()["detail"]


def test_a_criterion_outside_the_configured_set_is_refused_and_makes_no_metric_series(
    replicas: tuple[RunningGateway, RunningGateway],
) -> None:
    gateway, _ = replicas
    a, b = completions(gateway, 2)
    for path, body in [("/v1/feedback", {"completion_id": a, "vote": "up", "criterion": "made-up-7"}),
                       ("/v1/rankings", {"ranking": [a, b], "criterion": "made-up-7"})]:
        refused = post(gateway, path, body)
        assert refused.status_code == 400, refused.text
        assert refused.json()["detail"] == (
            "criterion 'made-up-7' is not one of helpfulness, harmlessness, honesty, overall; use one "
            "of them (the operator sets the list: HHH_LIMITS_CRITERIA)")
    assert event_id(post(gateway, "/v1/feedback", {"completion_id": a, "vote": "up", "criterion": "overall"}))
    metrics = httpx.get(f"{gateway.url}/metrics").text
    assert 'criterion="made-up-7"' not in metrics and 'criterion="overall"' in metrics
    assert 'hhh_rejected_requests_total{reason="unknown_criterion",route="/v1/rankings"} 1.0' in metrics


def test_a_labeler_key_ranks_only_as_the_labeler_ids_it_carries(replicas: tuple[RunningGateway, ...]) -> None:
    gateway = replicas[0]
    a, b = completions(gateway, 2)
    assert event_id(post(gateway, "/v1/rankings", {"ranking": [a, b]}, api_key="sk-labeler"))
    assert event_id(post(gateway, "/v1/rankings", {"ranking": [b, a], "labeler_id": "panel-7"}, api_key="sk-labeler"))
    claimed = post(gateway, "/v1/rankings", {"ranking": [a, b], "labeler_id": "panel-9"}, api_key="sk-labeler")
    assert claimed.status_code == 403
    assert "may rank as ['lena', 'panel-7'], not as 'panel-9'" in claimed.json()["detail"]
    assert 'hhh_rejected_requests_total{reason="not_your_labeler_id",route="/v1/rankings"}' in httpx.get(
        f"{gateway.url}/metrics").text


def test_an_api_key_configured_as_its_sha256_authenticates(replicas: tuple[RunningGateway, ...]) -> None:
    gateway = replicas[0]
    ids = completions(gateway, 2, user="carol")
    assert event_id(post(gateway, "/v1/rankings", {"ranking": ids}, api_key=HASHED_KEY))
    configured = next(key for key, owner in API_KEYS.items() if owner["user"] == "carol")
    refused = post(gateway, "/v1/rankings", {"ranking": ids}, api_key=configured)  # the hash is no key
    assert refused.status_code == 401 and "not valid" in refused.json()["detail"]


def test_api_keys_never_show_in_the_gateways_log(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    planted = {"sk-live-PLANTED-41c9": {"user": "ann"}, "sk-live-PLANTED-labeler": {"user": "lu", "roles": ["labeler"]}}
    with caplog.at_level("DEBUG"):
        gateway = start_gateway(f"http://127.0.0.1:{free_port()}", tmp_path, ready_path="/healthz",
                                auth=True, api_keys=planted)
        try:
            ids = completions(gateway, 2, user="ann")
            assert event_id(post(gateway, "/v1/rankings", {"ranking": ids}, api_key="sk-live-PLANTED-41c9"))
            wrong = post(gateway, "/v1/rankings", {"ranking": ids}, api_key="sk-live-PLANTED-wrong")
            assert wrong.status_code == 401 and "PLANTED" not in wrong.text
            assert post(gateway, "/v1/chat/completions", {"model": "hhh", "messages": [{"role": "user", "content": "hi"}]},
                        api_key="sk-live-PLANTED-labeler").status_code == 503  # the engine is down: logged
        finally:
            gateway.stop()
    assert caplog.records and "PLANTED" not in caplog.text
    assert "PLANTED" not in repr(gateway.gateway) and "PLANTED" not in repr(gateway.gateway.settings)


def test_feedback_is_counted_per_global_version_and_once_for_all_personal_adapters() -> None:
    """The ``adapter`` label of hhh_feedback_total takes as many values as there are global
    versions, however many users have a personal adapter."""
    labels = {feedback_adapter_label(AdapterRef(scope=scope, version=version))
              for scope, version in [("base", None), ("global", 1), ("global", 2),
                                     *((f"user:u{i}", 1 + i % 3) for i in range(500))]}
    assert labels == {"base", "global@1", "global@2", "user"}
