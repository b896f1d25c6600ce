"""The run record: one JSON object per line and iteration, mirrored to the console and to
Prometheus (``hhh_trainer_iteration_stat``, the latest iteration's numbers per run kind)."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

from trainer.metrics import ITERATION_STAT

logger = logging.getLogger(__name__)


class RunRecord:
    """Appends metrics to a JSONL file (if a path is given) and logs a one-line summary."""

    def __init__(self, path: Path | None, kind: str) -> None:
        self.path = path
        self.kind = kind
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)

    def write(self, metrics: dict[str, Any]) -> None:
        """Record one iteration's metrics (numbers, strings, booleans)."""
        entry = {"kind": self.kind, "time": time.time(), **metrics}
        if self.path is not None:
            with self.path.open("a") as f:
                f.write(json.dumps(entry) + "\n")
        run = self.kind.split(":")[0]  # "dpo:user:ann" -> "dpo": no label per user
        for name, value in metrics.items():
            if isinstance(value, int | float) and not isinstance(value, bool):
                ITERATION_STAT.labels(run=run, stat=name).set(value)
        logger.info("%s %s", self.kind, " ".join(
            f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in metrics.items()))
