"""Reward-model refreshes: from feedback events through the real broker to a stored version
that orders held-out pairs; warm-started refreshes; pair sets refused as too small or one-sided."""

from __future__ import annotations

from pathlib import Path

import pytest

from streams.config import KafkaSettings
from streams.events import (
    AdapterRef,
    ChatMessage,
    CompletionEvent,
    Event,
    RankingFeedback,
    SamplingParams,
    ThumbsFeedback,
)
from streams.kafka_log import KafkaEventLog
from streams.log import Record
from trainer.config import RewardSettings, TrainerSettings
from trainer.demo_model.feedback import T0, politeness_events, publish_all
from trainer.preferences.ingest import ingest_available
from trainer.preferences.store import DatasetStore, split_of
from trainer.metrics import REWARD_REFRESHES
from trainer.reward.refresh import refresh_reward_model
from trainer.reward.scorer import RewardScorer
from common.files import sha256_file
from trainer.reward.versions import RewardModelStore

def settings_for(tmp_path: Path, tiny_model_dir: Path, **reward: object) -> tuple[TrainerSettings, RewardSettings]:
    trainer = TrainerSettings(dataset_path=tmp_path / "dataset.db", eval_percent=20)
    reward.setdefault("refresh_min_new_pairs", 30)
    reward.setdefault("epochs", 2)
    reward.setdefault("max_length", 96)  # the replies and the end of their prompt: fast enough
    return trainer, RewardSettings(base_model=tiny_model_dir, store_dir=tmp_path / "reward-models",
                                   threads=2, **reward)


@pytest.mark.kafka
def test_feedback_through_the_broker_trains_a_reward_model_that_orders_held_out_pairs(
    kafka_settings: KafkaSettings, tiny_model_dir: Path, tmp_path: Path
) -> None:
    trainer, reward = settings_for(tmp_path, tiny_model_dir)
    dataset = DatasetStore(trainer.dataset_path)
    event_log = KafkaEventLog(kafka_settings)
    event_log.create_topics()
    try:
        publish_all(event_log, politeness_events(range(0, 64)))
        assert ingest_available(event_log, dataset, idle_s=1.0) == 64 * 3 + 32 + 32 * 2

        first = refresh_reward_model(trainer, reward, progress=False)
        assert first.status == "trained" and first.version == 1, first.message
        assert first.metrics["eval_accuracy"] >= 0.9, first.metrics
        assert refresh_reward_model(trainer, reward).status == "up_to_date"

        publish_all(event_log, politeness_events(range(64, 96)))
        ingest_available(event_log, dataset, idle_s=1.0)
        second = refresh_reward_model(trainer, reward, progress=False)
    finally:
        event_log.close()
        dataset.close()

    assert second.status == "trained" and second.version == 2, second.message
    assert second.metrics["eval_accuracy"] >= 0.9, second.metrics
    versions = RewardModelStore(reward.store_dir)
    manifest = versions.manifest(2)
    assert manifest.parent_version == 1 and manifest.training.epochs == reward.refresh_epochs
    assert manifest.data.new_pairs >= reward.refresh_min_new_pairs
    folder = versions.path(2)
    assert {name: sha256_file(folder / name) for name in manifest.files} == manifest.files
    assert sorted(p.name for p in reward.store_dir.iterdir()) == [".lock", "1", "2"]

    # PPO's view: on the completions the model was trained on, normalised rewards have mean 0
    # and std 1; polite replies to held-out prompts score above rude ones.
    scorer = RewardScorer.from_store(reward)
    dataset = DatasetStore(trainer.dataset_path)
    train_ids = {cid for p in dataset.build_pairs(eval_percent=20).pairs if p.split == "train"
                 for cid in (p.chosen_id, p.rejected_id)}
    dataset.close()
    events = [e for e in politeness_events(range(0, 96)) if isinstance(e, CompletionEvent)]
    trained_on = [e for e in events if e.completion_id in train_ids]
    scores = scorer.score([[m.model_dump() for m in e.messages] for e in trained_on],
                          [e.completion for e in trained_on])
    assert abs(scores.mean().item()) < 0.05 and abs(scores.std().item() - 1) < 0.05
    held_out = [e for e in events if e.completion_id not in train_ids and "curt" not in e.completion_id]
    by_id = dict(zip((e.completion_id for e in held_out), scorer.score(
        [[m.model_dump() for m in e.messages] for e in held_out], [e.completion for e in held_out]).tolist(),
        strict=True))
    prompts = {e.prompt_id for e in held_out}
    ordered = sum(by_id[f"{p}-polite"] > by_id[f"{p}-rude"] for p in prompts)
    assert ordered / len(prompts) >= 0.9


def records(events: list[Event]) -> list[Record]:
    return [Record("t", 0, offset, None, event, T0) for offset, event in enumerate(events)]


def test_too_few_pairs_are_refused_and_nothing_is_stored(tiny_model_dir: Path, tmp_path: Path) -> None:
    trainer, reward = settings_for(tmp_path, tiny_model_dir)
    dataset = DatasetStore(trainer.dataset_path)
    dataset.apply(records(politeness_events(range(0, 12))))
    dataset.close()
    refused = REWARD_REFRESHES.labels(outcome="too_few_pairs")._value.get()

    outcome = refresh_reward_model(trainer, reward)

    assert outcome.status == "refused"
    assert "training pairs, need at least 32 (HHH_REWARD_MIN_TRAIN_PAIRS)" in outcome.message
    assert REWARD_REFRESHES.labels(outcome="too_few_pairs")._value.get() == refused + 1
    assert RewardModelStore(reward.store_dir).versions() == []


def test_pairs_from_a_few_prompts_are_refused_as_one_sided(tiny_model_dir: Path, tmp_path: Path) -> None:
    """Plenty of pairs, but all from rankings of many replies to four prompts."""
    trainer, reward = settings_for(tmp_path, tiny_model_dir, min_eval_pairs=1)
    events: list[Event] = []
    for prompt in ("p-a", "p-b", "p-c", "p-d"):
        ids = [f"{prompt}-{i}" for i in range(12)]
        events += [CompletionEvent(
            completion_id=cid, request_id=prompt, prompt_id=prompt, user_id="u",
            messages=[ChatMessage(role="user", content=f"question {prompt}")], completion=f"answer {cid}",
            choice_index=i, adapter=AdapterRef(scope="base"), model="tiny", sampling=SamplingParams(),
            prompt_tokens=3, completion_tokens=2, latency_ms=1.0) for i, cid in enumerate(ids)]
        events.append(RankingFeedback(prompt_id=prompt, user_id="lena", labeler_id="lena",
                                      ranking=[[cid] for cid in ids]))
    dataset = DatasetStore(trainer.dataset_path)
    dataset.apply(records(events))
    pairs = dataset.build_pairs(eval_percent=20).pairs
    dataset.close()
    assert {p.split for p in pairs} == {"train", "eval"}, "the fixture needs both splits"

    outcome = refresh_reward_model(trainer, reward)

    assert outcome.status == "refused" and "prompts, need at least 8 (HHH_REWARD_MIN_PROMPTS)" in outcome.message
    assert not reward.store_dir.exists() or RewardModelStore(reward.store_dir).versions() == []
    assert not list(tmp_path.glob("reward-models/.tmp-*"))


def flipped(events: list[Event], eval_percent: int) -> list[Event]:
    """The feedback of training-split prompts reversed (rude preferred); held-out ones kept."""
    out: list[Event] = []
    for event in events:
        prompt_id = event.prompt_id if hasattr(event, "prompt_id") else event.completion_id.rsplit("-", 1)[0]
        if split_of(prompt_id, eval_percent) == "eval" or isinstance(event, CompletionEvent):
            out.append(event)
        elif isinstance(event, RankingFeedback):
            out.append(event.model_copy(update={"ranking": list(reversed(event.ranking))}))
        else:
            out.append(event.model_copy(update={"vote": "down" if event.vote == "up" else "up"}))
    return out


def test_a_refresh_worse_than_its_parent_is_refused_recorded_and_not_retried_at_once(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    """Version 1 learns politeness; then mostly reversed training feedback arrives (a labeling
    attack or a bug). The warm-started refresh orders the clean held-out pairs worse than
    version 1 does, so it is not stored: PPO keeps version 1."""
    trainer, reward = settings_for(tmp_path, tiny_model_dir, refresh_epochs=3)
    dataset = DatasetStore(trainer.dataset_path)
    dataset.apply(records(politeness_events(range(0, 64))))
    assert refresh_reward_model(trainer, reward, progress=False).status == "trained"
    attack = flipped(politeness_events(range(64, 224)), trainer.eval_percent)
    dataset.apply([Record("t", 0, 10_000 + i, None, e, T0) for i, e in enumerate(attack)])
    dataset.close()
    refusals = REWARD_REFRESHES.labels(outcome="worse_than_parent")._value.get()

    outcome = refresh_reward_model(trainer, reward, progress=False)

    assert outcome.status == "refused", outcome.message
    assert "held-out accuracy fell from" in outcome.message and "PPO keeps version 1" in outcome.message
    versions = RewardModelStore(reward.store_dir)
    assert versions.versions() == [1]
    refusal = versions.last_refusal()
    assert refusal is not None and refusal.parent_version == 1
    assert refusal.eval_accuracy < refusal.parent_eval_accuracy and refusal.loss_lower_bound > 0
    assert REWARD_REFRESHES.labels(outcome="worse_than_parent")._value.get() == refusals + 1
    again = refresh_reward_model(trainer, reward, progress=False)  # no new pairs since the refusal
    assert again.status == "up_to_date" and "the last refresh was refused" in again.message


def unpaired_politeness_votes(prompts: range) -> list[Event]:
    """The politeness completions, but every user votes once per prompt, so no pair forms: on
    even prompts a fan votes the polite reply up, on odd ones a critic votes the rude one down."""
    completions = [e for e in politeness_events(prompts) if isinstance(e, CompletionEvent)]
    votes = [ThumbsFeedback(completion_id=f"prompt-{n}-polite", user_id=f"fan-{n % 5}", vote="up")
             if n % 2 == 0 else
             ThumbsFeedback(completion_id=f"prompt-{n}-rude", user_id=f"critic-{n % 5}", vote="down")
             for n in prompts]
    return completions + votes


def test_votes_that_form_no_pair_train_a_reward_model_that_orders_held_out_prompts(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    trainer, reward = settings_for(tmp_path, tiny_model_dir)
    dataset = DatasetStore(trainer.dataset_path)
    dataset.apply(records(unpaired_politeness_votes(range(0, 96))))
    assert dataset.build_pairs(eval_percent=20).pairs == []
    dataset.close()

    # Pairs only (the old behaviour): nothing to train on.
    old = refresh_reward_model(trainer, reward.model_copy(update={"pointwise_weight": 0.0}))
    assert old.status == "refused" and "0 training pairs and 0 votes" in old.message
    assert RewardModelStore(reward.store_dir).versions() == []

    outcome = refresh_reward_model(trainer, reward, progress=False)

    assert outcome.status == "trained" and outcome.version == 1, outcome.message
    manifest = RewardModelStore(reward.store_dir).manifest(1)
    held_out_prompts = [n for n in range(96) if split_of(f"prompt-{n}", 20) == "eval"]
    assert manifest.data.train_pairs == 0 and manifest.data.train_votes == 96 - len(held_out_prompts)
    # Held-out vote comparisons (a fan's up against a critic's down) stand in for pairs.
    assert manifest.data.eval_pairs >= reward.min_eval_pairs
    assert outcome.metrics["eval_accuracy"] >= 0.9, outcome.metrics
    again = refresh_reward_model(trainer, reward)
    assert again.status == "up_to_date" and "0 new votes" in again.message

    scorer = RewardScorer.from_store(reward)
    events = {e.completion_id: e for e in unpaired_politeness_votes(range(0, 96))
              if isinstance(e, CompletionEvent)}
    ids = [f"prompt-{n}-{style}" for n in held_out_prompts for style in ("polite", "rude")]
    scores = dict(zip(ids, scorer.score([[m.model_dump() for m in events[i].messages] for i in ids],
                                        [events[i].completion for i in ids]).tolist(), strict=True))
    ordered = sum(scores[f"prompt-{n}-polite"] > scores[f"prompt-{n}-rude"] for n in held_out_prompts)
    assert ordered / len(held_out_prompts) >= 0.9
