"""The run record: one JSON object per line and iteration, mirrored to the console."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

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
        logger.info("%s %s", self.kind, " ".join(
            f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in metrics.items()))
