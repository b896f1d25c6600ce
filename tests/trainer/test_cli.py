"""`hhh train reward --once`, run as a user runs it, on the embedded event log."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from streams.codec import COMPLETIONS, FEEDBACK
from streams.events import CompletionEvent
from streams.sqlite_log import SqliteEventLog
from trainer.demo_model.feedback import politeness_events
from trainer.reward.versions import RewardModelStore


def train_reward_once(home: Path, tiny_model_dir: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HHH_HOME": str(home), "HHH_REWARD_BASE_MODEL": str(tiny_model_dir),
           "HHH_REWARD_EPOCHS": "2", "HHH_REWARD_MAX_LENGTH": "96", "HHH_TRAINER_EVAL_PERCENT": "20"}
    command = [sys.executable, "-c", "from hhh.cli import main; main()", "train", "reward", "--once"]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)


def publish(home: Path, prompts: range) -> None:
    with SqliteEventLog(home / "events.db") as event_log:
        for event in politeness_events(prompts):
            if isinstance(event, CompletionEvent):
                event_log.publish(COMPLETIONS, event.prompt_id, event)
            else:
                event_log.publish(FEEDBACK, event.user_id, event)
        event_log.flush()


def test_train_reward_once_refuses_too_few_pairs_then_stores_a_version(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    publish(tmp_path, range(0, 12))
    refused = train_reward_once(tmp_path, tiny_model_dir)
    assert refused.returncode == 1, refused.stderr
    assert "not training a reward model:" in refused.stdout
    assert "need at least 32 (HHH_REWARD_MIN_TRAIN_PAIRS); nothing stored" in refused.stdout
    assert RewardModelStore(tmp_path / "reward-models").versions() == []

    publish(tmp_path, range(12, 72))
    trained = train_reward_once(tmp_path, tiny_model_dir)
    assert trained.returncode == 0, trained.stderr
    assert f"stored reward model version 1 in {tmp_path / 'reward-models' / '1'}" in trained.stdout
    assert "reward_train step=" in trained.stderr  # no terminal: progress goes to the log
    manifest = RewardModelStore(tmp_path / "reward-models").manifest(1)
    assert manifest.data.train_pairs >= 32 and manifest.parent_version is None
