"""The demo model (the service's default base), built once per test session and cached.

It takes a few minutes on 2 cores the first time; the folder is cached under the session's hhh
home (see `tests.fixtures.vllm_engine.session_hhh_home`), so later sessions find it at once.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.fixtures.vllm_engine import session_hhh_home
from trainer.demo_model.build import build_demo_model


@pytest.fixture(scope="session")
def demo_model_dir() -> Path:
    """Folder of the `demo` variant (seed 0), built on first use and cached."""
    return build_demo_model("demo", seed=0, home=session_hhh_home())
