"""The TRL virtualenv every peer benchmark runs TRL in: ``bench/.venvs/trl`` (gitignored).

One TRL version for every comparison: 1.12.0, the last release that ships PPO
(``trl.experimental.ppo.PPOTrainer``; 1.16.0 has none), alongside its ``RewardTrainer`` and
``DPOTrainer``. CPU torch 2.13.0 goes in first so that TRL does not pull another build;
transformers, peft and accelerate are pinned to ``.venv``'s versions, so both sides run the same
model code. Created on first use, re-installed when the requirements change.
"""

from __future__ import annotations

import importlib.metadata
import subprocess
import sys
from pathlib import Path

TRL_VERSION = "1.12.0"
TRL_VENV = Path(__file__).resolve().parent / ".venvs" / "trl"


def ensure_trl_venv() -> Path:
    """The TRL virtualenv's python, created and installed on first use."""
    python = TRL_VENV / "bin" / "python"
    pins = [f"{name}=={importlib.metadata.version(name)}" for name in ("transformers", "peft", "accelerate")]
    requirements = [f"trl=={TRL_VERSION}", "datasets", "psutil", *pins]
    stamp = TRL_VENV / ".installed"
    if stamp.is_file() and stamp.read_text() == " ".join(requirements):
        return python
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(TRL_VENV)], check=True)
    pip = [str(python), "-m", "pip", "install", "--quiet"]
    subprocess.run([*pip, "torch==2.13.0"], check=True)
    subprocess.run([*pip, *requirements], check=True)
    stamp.write_text(" ".join(requirements))
    return python
