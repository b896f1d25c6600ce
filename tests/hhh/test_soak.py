"""The fault and abuse soak (`bench.soak`) on a short schedule: `hhh up` on the tiny model under
chat and feedback load from several API keys, faults injected one after another, and at the
end every vote the gateway accepted is in the trainer's dataset exactly once — with the
embedded event log, and with Kafka (the session's Tansu broker, stopped and restarted)."""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest

from bench.soak import Soak, SoakReport, SoakSettings, format_report
from tests.fixtures.tansu import tansu_binary

pytestmark = pytest.mark.vllm

INGEST_ONLY = {"HHH_REWARD_MIN_TRAIN_PAIRS": "1000000000"}
"""Trainer rounds that only ingest: a reward model trained beside the engine would take minutes
on 2 cores, and the accounting needs only the ingest."""


def short_soak(tmp_path: Path, model_dir: Path, faults: list[str], **options: object) -> SoakReport:
    settings = SoakSettings(model_dir=model_dir, home=tmp_path / "home", users=2, steady_s=5,
                            settle_s=2, outage_s=4, flood_s=3, flood_concurrency=20,
                            ingest_timeout_s=180, rate_per_s=10, burst=20,
                            environment=INGEST_ONLY, **options)
    report = Soak(settings).run(faults)
    print(format_report(report))
    return report


def assert_nothing_lost_or_counted_twice(report: SoakReport) -> None:
    accounting = report.accounting
    assert accounting.accepted > 0
    assert (accounting.lost, accounting.unexpected, accounting.latest_vote_mismatches,
            accounting.completions_missing) == (0, 0, 0, 0), accounting
    assert accounting.stored == accounting.accepted
    assert report.ledger_notes["retries_given_a_new_event_id"] == 0
    assert not [k for k in report.ledger_notes if k.startswith(("refused", "unresolved"))], report.ledger_notes


def test_under_load_a_killed_engine_core_and_trainer_poison_and_a_flood_lose_no_feedback(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    report = short_soak(tmp_path, tiny_model_dir,
                        ["poison_messages", "dotdot_user", "flood", "trainer_killed", "engine_core_killed"])
    phases = {phase.name: phase for phase in report.phases}
    assert all(phase.recovery_s is not None for phase in report.phases), format_report(report)
    assert all(phase.feedback_flowing_s is not None for phase in report.phases), format_report(report)
    assert all(f"'{topic}': 1" in phases["poison_messages"].notes[0] for topic in ("completions", "feedback", "adapters"))
    assert phases["dotdot_user"].notes[0].endswith("exit 1")
    assert phases["dotdot_user"].counts["abuse:4xx"] == 2
    flood = phases["flood"].counts
    assert flood["flood:429"] > 0 and "(0 without Retry-After)" in phases["flood"].notes[0]
    assert phases["flood"].counts["chat:429"] == 0  # the other keys were not limited
    assert_nothing_lost_or_counted_twice(report)


@pytest.mark.kafka
def test_on_kafka_a_broker_restart_and_a_gateway_restart_lose_no_feedback(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    url = "tcp://127.0.0.1:{port}"
    command = f"{shlex.quote(str(tansu_binary()))} broker --listener-url {url} --advertised-listener-url {url}"
    report = short_soak(tmp_path, tiny_model_dir, ["broker_restarted", "poison_messages", "gateway_restarted"],
                        backend="kafka", broker_command=command)
    assert all(phase.recovery_s is not None for phase in report.phases), format_report(report)
    assert all(phase.feedback_flowing_s is not None for phase in report.phases), format_report(report)
    assert "not yet ingested" not in " ".join(report.phases[1].notes)
    assert_nothing_lost_or_counted_twice(report)
