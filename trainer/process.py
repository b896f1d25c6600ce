"""The trainer daemon as a child process (`hhh train`), for `hhh up` to supervise.

The daemon is safe to kill at any point (`trainer.daemon`), so stopping it is a plain SIGTERM,
then SIGKILL if it has not exited within the timeout.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections import deque
from pathlib import Path


class TrainerProcess:
    """`python -m hhh train` with this process's environment, output appended to ``log_path``.

    ``base_model``: the served model's folder, passed as ``HHH_TRAINER_BASE_MODEL`` unless that
    is set already, so that adapters are trained on the weights the engine serves.
    """

    def __init__(self, log_path: Path, base_model: Path | None = None) -> None:
        self.log_path = log_path
        self.base_model = base_model
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def running(self) -> bool:
        """Whether the daemon has been started and has not exited."""
        return self._process is not None and self._process.poll() is None

    @property
    def pid(self) -> int | None:
        """The daemon's process id; None when stopped."""
        return self._process.pid if self._process is not None else None

    def start(self) -> None:
        """Launch the daemon; returns at once."""
        environment = dict(os.environ)
        if self.base_model is not None:
            environment.setdefault("HHH_TRAINER_BASE_MODEL", str(self.base_model))
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self._process = subprocess.Popen(
                [sys.executable, "-m", "hhh", "train"], stdout=log, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, env=environment,
            )

    def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM, then SIGKILL after ``timeout`` seconds; returns once the daemon is gone."""
        if self._process is None:
            return
        process, self._process = self._process, None
        process.terminate()
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def log_tail(self, lines: int = 40) -> str:
        """The last ``lines`` lines of the daemon's log ('' if there is none yet)."""
        try:
            with open(self.log_path, errors="replace") as log:
                return "".join(deque(log, maxlen=lines))
        except FileNotFoundError:
            return ""
