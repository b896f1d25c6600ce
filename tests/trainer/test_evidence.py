"""When a scope has something new to train on: a changed reward model or enough new examples
since its last attempt, remembered across trainer restarts."""

from __future__ import annotations

from pathlib import Path

from trainer.evidence import AttemptLog, Evidence


def test_a_changed_reward_model_or_enough_new_examples_is_news() -> None:
    since = Evidence(reward_model_version=3, examples=100)
    assert Evidence(4, 100).lacks_news(since, min_new=32) is None  # a new reward model
    assert Evidence(3, 132).lacks_news(since, min_new=32) is None  # enough new prompts
    assert Evidence(3, 131).lacks_news(since, min_new=32) == (
        "the reward model (version 3) is unchanged and 31 new training examples arrived, 32 are needed")
    assert Evidence(None, 5).lacks_news(Evidence(None, 1), min_new=8) == (
        "4 new training examples arrived, 8 are needed")
    assert Evidence(3, 0).lacks_news(None, min_new=32) is None  # never trained: train


def test_the_evidence_survives_in_manifests_and_in_the_attempt_log(tmp_path: Path) -> None:
    evidence = Evidence(2, 64)
    assert Evidence.from_metrics(evidence.as_metrics()) == evidence
    assert Evidence.from_metrics({"reward_gain": 0.3}) is None  # published before the rule
    attempts = AttemptLog(tmp_path / "runs")
    assert attempts.last("global") is None
    attempts.record("global", evidence)
    attempts.record("user:ann", Evidence(None, 40))
    reopened = AttemptLog(tmp_path / "runs")
    assert reopened.last("global") == evidence and reopened.last("user:ann") == Evidence(None, 40)
