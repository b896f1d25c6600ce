"""The `hhh` entry point, run as a user runs it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from streams.codec import FEEDBACK
from streams.events import ThumbsFeedback
from streams.sqlite_log import SqliteEventLog


def hhh(*args: str, home: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HHH_HOME": str(home)}
    command = [sys.executable, "-c", "from hhh.cli import main; main()", *args]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=60)


def test_events_tail_prints_each_event_as_json(tmp_path: Path) -> None:
    with SqliteEventLog(tmp_path / "events.db") as event_log:
        events = [ThumbsFeedback(completion_id=f"c{i}", user_id="u", vote="up") for i in range(3)]
        for event in events:
            event_log.publish(FEEDBACK, "u", event)

    result = hhh("events", "tail", "feedback", "--limit", "2", "--wait", "0.2", home=tmp_path)

    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert [json.loads(line.split(" ", 2)[2])["event_id"] for line in lines] == [
        e.event_id for e in events[:2]
    ]


def test_an_unknown_topic_is_a_one_line_error(tmp_path: Path) -> None:
    result = hhh("events", "tail", "nope", home=tmp_path)
    assert result.returncode == 1
    assert result.stderr.strip().endswith(
        "hhh events: unknown topic 'nope'; known topics: "
        "['adapters', 'completions', 'dead-letters', 'feedback']"
    )
    assert "Traceback" not in result.stderr


def test_invalid_settings_name_the_value(tmp_path: Path) -> None:
    env_result = subprocess.run(
        [sys.executable, "-c", "from hhh.cli import main; main()", "events", "tail", "feedback"],
        env={**os.environ, "HHH_HOME": str(tmp_path), "HHH_EVENTS_BACKEND": "kafkaa"},
        capture_output=True, text=True, timeout=60,
    )
    assert env_result.returncode == 1
    assert "Input should be 'sqlite' or 'kafka'" in env_result.stderr
    assert "kafkaa" in env_result.stderr


def test_data_rebuild_then_stats_report_pairs_and_agreement(tmp_path: Path) -> None:
    from tests.trainer.preferences.test_store import completion

    from streams.codec import COMPLETIONS
    from streams.events import RankingFeedback

    with SqliteEventLog(tmp_path / "events.db") as event_log:
        for cid in "abc":
            event_log.publish(COMPLETIONS, "p1", completion(cid))
        for labeler, order in (("ann", "abc"), ("bo", "abc"), ("cy", "cba")):
            event_log.publish(FEEDBACK, labeler, RankingFeedback(
                prompt_id="p1", user_id=labeler, labeler_id=labeler, ranking=[[c] for c in order]))

    rebuilt = hhh("data", "rebuild", "--idle", "0.3", home=tmp_path)
    assert rebuilt.returncode == 0, rebuilt.stderr
    assert "6 events" in rebuilt.stdout

    stats = hhh("data", "stats", home=tmp_path)
    assert stats.returncode == 0, stats.stderr
    assert "ranking  helpfulness" in stats.stdout and "total 3" in stats.stdout
    assert "Krippendorff's alpha" in stats.stdout
    # p1 is held out; cy, down-weighted to 0, supports none of its pairs
    assert "largest voices in eval (share of the weight, of 2;" in stats.stdout
    assert "ann 50.0%, bo 50.0%" in stats.stdout
    cy = next(line for line in stats.stdout.splitlines() if line.strip().startswith("cy "))
    assert "0.0%" in cy


def test_data_stats_without_a_dataset_says_what_to_run(tmp_path: Path) -> None:
    result = hhh("data", "stats", home=tmp_path)
    assert result.returncode == 1 and "run `hhh data rebuild` first" in result.stderr


def test_hhh_home_is_private_and_so_are_its_databases_and_keys(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every user's prompts are in events.db, outbox.db and the dataset: owner only, as the keys."""
    from serving.config import GatewaySettings
    from streams.outbox import Outbox
    from trainer.preferences.store import DatasetStore

    home = tmp_path / "home"
    assert hhh("events", "tail", "completions", "--wait", "0.1", home=home).returncode == 0
    assert home.stat().st_mode & 0o777 == 0o700
    Outbox(home / "outbox.db").close()
    DatasetStore(home / "dataset.db").close()
    monkeypatch.setenv("HHH_HOME", str(home))
    GatewaySettings().signing_secret()
    files = {path.name: path.stat().st_mode & 0o777 for path in home.iterdir()}
    assert {"events.db", "outbox.db", "dataset.db", "signing.key"} <= set(files)
    assert {name: mode for name, mode in files.items() if mode != 0o600} == {}  # -wal and -shm too

    (home / "events.db").chmod(0o644)  # made by an older version
    home.chmod(0o755)
    assert hhh("events", "tail", "completions", "--wait", "0.1", home=home).returncode == 0
    assert home.stat().st_mode & 0o777 == 0o700 and (home / "events.db").stat().st_mode & 0o777 == 0o600


def test_a_home_not_ours_to_tighten_is_a_warning_not_a_failure(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A volume's mount point (Kubernetes fsGroup) belongs to root: chmod is refused there."""
    from streams.config import private_hhh_home

    home = tmp_path / "volume"
    home.mkdir(mode=0o775)
    home.chmod(0o775)
    monkeypatch.setenv("HHH_HOME", str(home))

    def refused(*_: object) -> None:
        raise PermissionError("not the owner")

    monkeypatch.setattr(Path, "chmod", refused)
    assert private_hhh_home() == home
    assert "open to other accounts and not ours to change (mode 775)" in caplog.text
