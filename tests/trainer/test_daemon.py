"""The training daemon end to end on the embedded log: feedback that prefers polite replies →
reward model → a PPO round on the global adapter → the gate → a published adapter version and
its `adapters` event; then a round against that version, refused over a tight KL budget; and
global rounds by DPO on the users' pairs, alone and before PPO (``HHH_TRAINER_GLOBAL_METHOD``).

That PPO raises the reward is `tests/trainer/rl/test_ppo.py`'s test; here the first gate
is lenient, so the test is about the round's plumbing, records and verdicts.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import torch

from serving.adapters.store import AdapterStore
from streams.codec import ADAPTERS
from streams.log import EventLog
from streams.sqlite_log import SqliteEventLog
from trainer.demo_model.feedback import politeness_events, publish_all
from trainer.config import DPOSettings, GateSettings, PPOSettings, RewardSettings, TrainerSettings
from trainer.daemon import RoundReport, TrainingDaemon, export_agreement
from trainer.metrics import GATE_STAT, LABELER_AGREEMENT, SCOPE_FAILURES, VERDICTS
from trainer.preferences.ingest import ingest_available
from trainer.preferences.pairs import Consensus
from trainer.preferences.store import DatasetStore
from trainer.reward.versions import RewardModelStore
from trainer.rl.dpo import DPOTrainer
from trainer.rl.models import load_policy_stack, lora_config
from trainer.unproven import STATE_FILE, UnprovenStore


LENIENT_GATE = {"reward_margin": -100.0, "kl_budget": 1e6, "anchor_kl_budget": 1e6, "agreement_margin": 1.0,
                "harmlessness_margin": 1.0}
"""A gate that publishes whatever PPO made: these tests are about the round, not the verdict."""


def daemon_for(
    tmp_path: Path, model_dir: Path, event_log: EventLog, store: AdapterStore | None = None,
    global_method: str = "ppo", **gate: object
) -> TrainingDaemon:
    settings = TrainerSettings(dataset_path=tmp_path / "dataset.db", eval_percent=20,
                               runs_dir=tmp_path / "runs", lock_dir=tmp_path / "locks",
                               ppo_iterations=3, gate_prompts=8, min_user_pairs=10_000,
                               global_method=global_method)
    reward = RewardSettings(base_model=model_dir, store_dir=tmp_path / "reward-models", epochs=2,
                            max_length=96, threads=2)
    ppo = PPOSettings(rollout_batch_size=16, num_minibatches=2, ppo_epochs=2, max_new_tokens=12,
                      learning_rate=2e-3, kl_target=None)
    gates = GateSettings(samples_per_prompt=1, min_samples=1, max_new_tokens=12, min_heldout_pairs=4,
                         red_team_min_samples=42, **gate)
    store = store or AdapterStore(tmp_path / "adapters")
    return TrainingDaemon(event_log, store, model_dir, settings, reward,
                          ppo, DPOSettings(), gates)


def politeness_log(tmp_path: Path) -> SqliteEventLog:
    """An embedded event log with completions and votes for polite replies over rude ones, on
    120 prompts (`trainer.demo_model.feedback.politeness_events`)."""
    event_log = SqliteEventLog(tmp_path / "events.db")
    event_log.create_topics()
    publish_all(event_log, politeness_events(range(0, 120)))
    return event_log


def run_record_of(runs_dir: Path, report: RoundReport) -> list[dict]:
    """The entries of `report`'s round's run record."""
    record = runs_dir / f"{report.round_id}.jsonl"
    return [json.loads(line) for line in record.read_text().splitlines()]


def test_a_round_publishes_an_adapter_that_the_reward_model_prefers(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    event_log = politeness_log(tmp_path)
    daemon = daemon_for(tmp_path, tiny_model_dir, event_log, **LENIENT_GATE)
    published_before = VERDICTS.labels(scope_kind="global", outcome="published")._value.get()

    report = daemon.run_round()

    assert report.published == ["global@1"], report.steps
    manifest = daemon.adapters.get("global", 1)
    assert manifest.parent_version is None  # trained from the base model: nothing was deployed
    assert {"reward_gain", "kl_to_deployed", "heldout_pair_agreement", "dataset_events"} <= set(manifest.metrics)
    assert manifest.metrics["dataset_events"] == 540.0  # the data it was trained on, and where it ends:
    assert {key.split("/")[0] for key in manifest.trained_on} == {"completions", "feedback"}
    assert sum(manifest.trained_on.values()) == 540  # every offset of the log, from 0
    assert manifest.metrics["reward_model_version"] == 1.0
    assert {"reward_gain_lower", "kl_to_base", "train_examples", "kl_beta"} <= set(manifest.metrics)
    assert VERDICTS.labels(scope_kind="global", outcome="published")._value.get() == published_before + 1
    for stat in ("reward_gain_lower", "kl_to_base"):  # the dashboard's per-round gate figures
        assert GATE_STAT.labels(scope_kind="global", stat=stat)._value.get() == manifest.metrics[stat]
    assert LABELER_AGREEMENT.labels(stat="labelers")._value.get() >= 0
    with event_log.consumer(None, [ADAPTERS]) as reader:
        events = [r.event for r in reader.poll(max_records=10, timeout_s=1)]
    assert [(e.scope, e.version) for e in events] == [("global", 1)]
    run = run_record_of(tmp_path / "runs", report)
    assert [entry["kind"] for entry in run] == ["ppo"] * 3 + ["global"]  # 3 iterations, the verdict
    assert run[-1]["gate"]["publish"] is True

    # Nothing new arrived: the next round does not optimise the same reward model again.
    tight = daemon_for(tmp_path, tiny_model_dir, event_log, kl_budget=1e-3)
    second = tight.run_round()
    assert second.published == [], second.steps
    assert "reward model: version 1 is current" in second.steps[1]  # no new pairs: no retraining
    assert ("global: nothing new to train on: the reward model (version 1) is unchanged and 0 new "
            "training examples arrived, 32 are needed") in second.steps[-1], second.steps
    assert not any("exceeds the budget" in step for step in second.steps)

    # New prompts: a round trains against the version now deployed, from the β that version's
    # round ended with; over a tight KL budget it is refused.
    publish_all(event_log, politeness_events(range(120, 200)))
    third = tight.run_round()
    assert third.published == [], third.steps
    assert any("exceeds the budget" in step for step in third.steps), third.steps
    assert [m.version for m in (v.manifest for v in tight.adapters.list("global"))] == [1]
    assert tight.run_round().steps[-1].startswith("global: nothing new to train on"), "refused: not retried"
    event_log.close()


def test_a_global_round_by_dpo_learns_the_users_pairs_and_dpo_then_ppo_runs_both(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    event_log = politeness_log(tmp_path)
    daemon = daemon_for(tmp_path, tiny_model_dir, event_log, global_method="dpo", **LENIENT_GATE)

    report = daemon.run_round()

    assert report.published == ["global@1"], report.steps
    run = run_record_of(tmp_path / "runs", report)
    assert [entry["kind"] for entry in run] == ["dpo:global"] * 3 + ["global"]  # no PPO
    assert run[-1]["gate"]["publish"] is True
    assert daemon.adapters.get("global", 1).metrics["kl_beta"] == PPOSettings().kl_coef  # no PPO
    # On the held-out pairs (polite over rude, as the training pairs) the candidate's implicit
    # reward log π/π_base is higher for the chosen reply than for the rejected one: DPO learnt
    # the users' preference, beyond the pairs it saw.
    dataset = DatasetStore(tmp_path / "dataset.db")
    heldout_pairs = [p for p in dataset.build_pairs(eval_percent=20).pairs if p.split == "eval"]
    heldout, _ = TrainingDaemon._texts(dataset, heldout_pairs)
    dataset.close()
    stack = load_policy_stack(tiny_model_dir, None, lora_config(8, 16, ["q_proj"]),
                              resume=daemon.adapters.path("global", 1))
    scorer = DPOTrainer(stack, DPOSettings())
    with torch.no_grad():
        implicit = scorer.policy_logprobs(heldout) - scorer.reference_logprobs(heldout)
    margins = implicit[0] - implicit[1]
    assert len(heldout) >= 8 and (margins > 0).float().mean() >= 0.75, margins

    publish_all(event_log, politeness_events(range(120, 200)))
    both = daemon_for(tmp_path, tiny_model_dir, event_log, global_method="dpo+ppo", **LENIENT_GATE)
    second = both.run_round()
    assert second.published == ["global@2"], second.steps
    assert [entry["kind"] for entry in run_record_of(tmp_path / "runs", second)] == (
        ["dpo:global"] * 3 + ["ppo"] * 3 + ["global"])
    event_log.close()


def test_killed_at_any_step_and_restarted_it_loses_nothing_and_counts_nothing_twice(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    """`hhh train --once` as a user runs it, SIGKILLed while the reward model trains, then again
    in the middle of PPO, then run to the end: every event stored once, the reward model
    trained once, one adapter version published and announced, nothing half-written visible."""
    events = politeness_events(range(0, 120))
    with SqliteEventLog(tmp_path / "events.db") as event_log:
        event_log.create_topics()
        publish_all(event_log, events)
    environment = {
        **os.environ, "HHH_HOME": str(tmp_path), "HHH_TRAINER_BASE_MODEL": str(tiny_model_dir),
        "HHH_TRAINER_EVAL_PERCENT": "20", "HHH_TRAINER_PPO_ITERATIONS": "3",
        "HHH_TRAINER_GATE_PROMPTS": "8", "HHH_TRAINER_MIN_USER_PAIRS": "10000",
        "HHH_REWARD_EPOCHS": "2", "HHH_REWARD_MAX_LENGTH": "96", "HHH_REWARD_THREADS": "2",
        "HHH_PPO_ROLLOUT_BATCH_SIZE": "16", "HHH_PPO_NUM_MINIBATCHES": "2", "HHH_PPO_PPO_EPOCHS": "2",
        "HHH_PPO_MAX_NEW_TOKENS": "12", "HHH_PPO_LEARNING_RATE": "2e-3",
        "HHH_GATE_REWARD_MARGIN": "-100", "HHH_GATE_KL_BUDGET": "1e6", "HHH_GATE_AGREEMENT_MARGIN": "1",
        "HHH_GATE_ANCHOR_KL_BUDGET": "1e6",
        "HHH_GATE_SAMPLES_PER_PROMPT": "1", "HHH_GATE_MIN_SAMPLES": "1","HHH_GATE_MAX_NEW_TOKENS": "12",
        "HHH_GATE_MIN_HELDOUT_PAIRS": "4",
    }
    reward_models = RewardModelStore(tmp_path / "reward-models")
    adapters = AdapterStore(tmp_path / "adapters")

    def train_once(kill_when: Callable[[str], bool] | None) -> tuple[int, str]:
        """Run `hhh train --once`; SIGKILL it as soon as ``kill_when(output so far)`` holds."""
        process = subprocess.Popen([sys.executable, "-m", "hhh", "train", "--once"], env=environment,
                                   stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        output: list[str] = []
        reader = threading.Thread(target=lambda: output.extend(iter(process.stdout.readline, "")))
        reader.start()
        deadline = time.monotonic() + 300
        while process.poll() is None and time.monotonic() < deadline:
            if kill_when is not None and kill_when("".join(output)):
                process.send_signal(signal.SIGKILL)
                break
            time.sleep(0.05)
        process.wait(60)
        reader.join(10)
        return process.returncode, "".join(output)

    def in_ppo(_: str) -> bool:
        return any(path.read_text().strip() for path in (tmp_path / "runs").glob("*.jsonl"))

    code, output = train_once(lambda out: "ingested 540 new events" in out)
    assert code == -signal.SIGKILL, output
    assert reward_models.latest() is None  # killed while training: no version is visible
    code, output = train_once(in_ppo)
    assert code == -signal.SIGKILL, output
    assert "ingested 0 new events" in output  # nothing stored twice
    assert reward_models.latest() == 1
    assert adapters.list("global") == []  # killed in PPO: nothing published

    code, output = train_once(None)

    assert code == 0, output
    assert "reward model: version 1 is current" in output  # not trained again
    assert "global: published version 1 (parent None)" in output
    assert [info.manifest.version for info in adapters.list("global")] == [1]
    assert adapters.get("global", 1).metrics["dataset_events"] == len(events)
    dataset = DatasetStore(tmp_path / "dataset.db")
    assert dataset.event_count() == len(events)
    dataset.close()
    with SqliteEventLog(tmp_path / "events.db") as event_log, event_log.consumer(None, [ADAPTERS]) as reader:
        announced = [(r.event.scope, r.event.version) for r in reader.poll(max_records=10, timeout_s=1)]
    assert announced == [("global", 1)]


def ppo_iterations_of(runs_dir: Path, report: RoundReport) -> list[dict]:
    return [entry for entry in run_record_of(runs_dir, report) if "iteration" in entry]


def round_left_unproven(tmp_path: Path, model_dir: Path, event_log: EventLog) -> tuple[TrainingDaemon, RoundReport]:
    """A first round on politeness feedback whose candidate the gate refuses for want of evidence
    only: a reward margin no gain clears, every other check lenient."""
    event_log.create_topics()
    publish_all(event_log, politeness_events(range(0, 120)))
    strict = daemon_for(tmp_path, model_dir, event_log, **{**LENIENT_GATE, "reward_margin": 100.0})
    # Enough PPO, and gate samples, that the gain's mean is positive, as `unproven` needs.
    strict.settings = strict.settings.model_copy(update={"ppo_iterations": 8, "resume_unproven": True})
    strict.ppo = strict.ppo.model_copy(update={"learning_rate": 5e-3})
    strict.gate = strict.gate.model_copy(update={"min_samples": 64})
    return strict, strict.run_round()


def test_a_candidate_left_unproven_is_resumed_by_the_next_round(tiny_model_dir: Path, tmp_path: Path) -> None:
    """A candidate refused only for want of evidence (a margin no gain clears; nothing measured
    worse) is kept; the next round with new evidence starts its policy from it, not from the
    deployed adapter, against the same reference, and what it publishes holds both rounds."""
    event_log = SqliteEventLog(tmp_path / "events.db")
    strict, first = round_left_unproven(tmp_path, tiny_model_dir, event_log)

    assert first.published == [], first.steps
    assert any("kept the candidate as unproven (1 round(s) of PPO" in step for step in first.steps), first.steps
    kept = strict.unproven.resumable(None)
    assert kept is not None and kept.rounds == 1 and kept.round_id == first.round_id
    # The first round's policy started as the base model, its reference: no KL at first.
    assert ppo_iterations_of(tmp_path / "runs", first)[0]["kl"] == 0.0

    publish_all(event_log, politeness_events(range(120, 200)))
    lenient = daemon_for(tmp_path, tiny_model_dir, event_log, **LENIENT_GATE)
    lenient.settings = lenient.settings.model_copy(update={"resume_unproven": True})
    second = lenient.run_round()

    assert f"global: resuming the candidate round {first.round_id} left unproven (1 round(s) of PPO " \
           "against the version deployed now)" in second.steps, second.steps
    assert second.published == ["global@1"], second.steps
    manifest = lenient.adapters.get("global", 1)
    assert manifest.metrics["ppo_rounds"] == 2.0 and manifest.parent_version is None
    # Resumed: the policy's first rollouts already differ from the reference (the base model).
    assert abs(ppo_iterations_of(tmp_path / "runs", second)[0]["kl"]) > 1e-3
    assert lenient.unproven.resumable(None) is None  # published: nothing left to resume
    event_log.close()


def test_an_unproven_candidate_is_dropped_once_another_version_is_deployed(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    event_log = SqliteEventLog(tmp_path / "events.db")
    strict, _ = round_left_unproven(tmp_path, tiny_model_dir, event_log)
    assert strict.unproven.resumable(None) is not None

    assert strict.unproven.resumable(3) is None  # trained against the base; version 3 is deployed
    assert not strict.unproven.folder.exists()
    event_log.close()


def test_an_unreadable_unproven_candidate_is_dropped_not_failed_on(tmp_path: Path) -> None:
    store = UnprovenStore(tmp_path / "runs")
    store.folder.mkdir(parents=True)
    (store.folder / STATE_FILE).write_text('{"parent": null, "rounds": "many"')
    assert store.resumable(None) is None and not store.folder.exists()


def test_a_scope_that_fails_is_recorded_and_the_round_goes_on(tiny_model_dir: Path, tmp_path: Path) -> None:
    """One scope's error (a user's bad data, a broken adapter folder) is contained: logged,
    counted, in the run record and the report; the next scope still runs."""
    daemon = daemon_for(tmp_path, tiny_model_dir, SqliteEventLog(tmp_path / "events.db"))
    report = RoundReport("r1")
    failures_before = SCOPE_FAILURES.labels(scope_kind="user")._value.get()
    ran = []

    def broken() -> None:
        raise OSError("adapter folder vanished")

    daemon._locked(report, "user:ann", broken)
    daemon._locked(report, "user:bo", lambda: ran.append("bo"))

    assert report.failed == ["user:ann"] and ran == ["bo"]
    assert report.steps == ["user:ann: failed, nothing published: OSError: adapter folder vanished"]
    assert SCOPE_FAILURES.labels(scope_kind="user")._value.get() == failures_before + 1
    (entry,) = [json.loads(line) for line in (tmp_path / "runs" / "r1.jsonl").read_text().splitlines()]
    assert entry["kind"] == "user:ann" and entry["failed"] == "OSError: adapter folder vanished"


def test_labeler_agreement_is_exported_for_the_dashboard() -> None:
    """The learning dashboard's agreement panels read what `export_agreement` sets."""
    export_agreement(Consensus([], labeler_agreement={"ann": 0.9, "bob": 0.4, "cy": 0.8},
                               labeler_weight={"ann": 1.0, "bob": 0.4, "cy": 1.0},
                               krippendorff_alpha=0.55, pairwise_agreement=0.7))
    value = lambda stat: LABELER_AGREEMENT.labels(stat=stat)._value.get()  # noqa: E731
    assert (value("krippendorff_alpha"), value("pairwise"), value("lowest_labeler")) == (0.55, 0.7, 0.4)
    assert (value("labelers"), value("down_weighted")) == (3, 1)
    export_agreement(Consensus([]))  # no overlapping labelers: undefined, not a stale number
    assert math.isnan(value("krippendorff_alpha")) and math.isnan(value("lowest_labeler"))


def test_a_personal_candidate_is_compared_with_the_users_own_adapter(tiny_model_dir: Path, tmp_path: Path) -> None:
    """Lena's first personal adapter beats the base she was served and is published; the next
    candidate, trained the same way on a handful more of her pairs, must beat *that* adapter —
    and does not (it is nearly the same adapter), although it agrees with her much more than the
    base does."""
    event_log = SqliteEventLog(tmp_path / "events.db")
    event_log.create_topics()
    daemon = daemon_for(tmp_path, tiny_model_dir, event_log, harmlessness_margin=1.0)  # not the subject
    daemon.settings = daemon.settings.model_copy(update={"min_user_pairs": 8, "min_new_user_pairs": 1})
    daemon.dpo = DPOSettings(epochs=3, batch_size=16, learning_rate=5e-3)

    def lena_round(prompts: range) -> RoundReport:
        publish_all(event_log, politeness_events(prompts))
        report = RoundReport("lena")
        dataset = DatasetStore(daemon.settings.dataset_path)
        try:
            ingest_available(event_log, dataset, idle_s=0.2)
            pairs = [p for p in dataset.build_pairs(eval_percent=20).pairs if p.user_id == "lena"]
            daemon._user_round(report, dataset, "lena", pairs)
        finally:
            dataset.close()
        return report

    first = lena_round(range(0, 160))
    assert first.published == ["user:lena@1"], first.steps
    served_before = daemon.adapters.get("user:lena", 1).metrics
    assert served_before["compared_version"] == 0.0  # against the global adapter (the base here)
    assert served_before["agreement_gain_lower"] > 0

    second = lena_round(range(160, 168))

    assert second.published == [], second.steps
    assert "against user:lena@1's" in second.steps[-1] and "lower bound of the gain" in second.steps[-1]
    verdict = [json.loads(line) for line in (tmp_path / "runs" / "lena.jsonl").read_text().splitlines()
               if "gate" in line][-1]["gate"]
    assert verdict["compared_with"] == "user:lena@1"
    assert verdict["candidate"] > served_before["deployed_pair_agreement"] + 0.1  # the old rule: published
