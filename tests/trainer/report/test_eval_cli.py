"""`hhh eval`, run as an operator runs it, after a training round on the embedded log: a
report folder with the base and the published version side by side, the gate's verdict beside
each, plots and a JSON summary; a version that does not exist is a clear error."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.trainer.test_daemon import LENIENT_GATE, daemon_for, politeness_log

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def hhh_eval(tmp_path: Path, model_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HHH_HOME": str(tmp_path / "home"), "HHH_TRAINER_BASE_MODEL": str(model_dir),
           "HHH_TRAINER_DATASET_PATH": str(tmp_path / "dataset.db"), "HHH_TRAINER_EVAL_PERCENT": "20",
           "HHH_TRAINER_RUNS_DIR": str(tmp_path / "runs"), "HHH_ADAPTERS_STORE_ROOT": str(tmp_path / "adapters"),
           "HHH_REWARD_STORE_DIR": str(tmp_path / "reward-models"), "HHH_REWARD_MAX_LENGTH": "96",
           "HHH_EVAL_MAX_NEW_TOKENS": "12", "HHH_EVAL_SAMPLES_PER_PROMPT": "2"}
    command = [sys.executable, "-c", "from hhh.cli import main; main()", "eval", *args]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)


def test_eval_reports_the_base_and_a_published_version_with_the_gates_verdict(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    event_log = politeness_log(tmp_path)
    assert daemon_for(tmp_path, tiny_model_dir, event_log, **LENIENT_GATE).run_round().published == ["global@1"]

    done = hhh_eval(tmp_path, tiny_model_dir, "--out", str(tmp_path / "report"), "--prompts", "16")

    assert done.returncode == 0, done.stderr
    assert f"report: {tmp_path / 'report' / 'report.md'}" in done.stdout
    summary = json.loads((tmp_path / "report" / "summary.json").read_text())
    base, published = summary["versions"]  # default: the base and every global version
    assert (base["label"], published["label"]) == ("base", "global@1")
    assert published["gate"].startswith("published by the gate: reward gain")
    assert published["verdict"] in {"better", "worse", "no measurable difference"}
    assert published["reward"] is not None and published["kl_to_base"]["mean"] > 0
    assert summary["setup"]["judge"] == "constitution score" and summary["setup"]["reward_model_version"] == 1
    assert summary["setup"]["prompts"] >= 2  # the dataset's held-out prompts
    assert [(v["scope"], v["publish"]) for v in summary["gate_history"]] == [("global", True)]
    report = (tmp_path / "report" / "report.md").read_text()
    assert "| `global@1` |" in report and "| `base` |" in report and "published by the gate" in report
    for plot in ("scores.png", "over_time.png", "kl_vs_reward.png"):
        assert f"]({plot})" in report
        image = (tmp_path / "report" / plot).read_bytes()
        assert image.startswith(PNG_MAGIC) and len(image) > 5_000, plot

    missing = hhh_eval(tmp_path, tiny_model_dir, "base", "global@7", "--out", str(tmp_path / "other"))
    assert missing.returncode != 0
    assert "cannot evaluate 'global@7'" in missing.stderr and "hhh adapters list" in missing.stderr
    assert not (tmp_path / "other").exists()
