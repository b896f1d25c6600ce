"""`hhh up` gives the engine it starts and the trainer disjoint CPU sets; `hhh serve` alone, or
remote and GPU engines, keep today's unpinned processes unless a list says otherwise."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from common.cpus import CpuPlan, available_cpus, default_plan
from common.errors import UserError
from hhh.colocation import cpu_plan, local_gateway_url
from serving.config import GatewaySettings
from trainer.config import TrainerSettings

LOWEST, HIGHEST = min(available_cpus()), max(available_cpus())


def gateway(**settings: object) -> GatewaySettings:
    return GatewaySettings(signing_key="s" * 32, **settings)


def test_hhh_up_with_a_cpu_engine_splits_the_cpus_by_default() -> None:
    plan = cpu_plan(gateway(), TrainerSettings(), with_trainer=True, cpu_engine=True)
    assert plan == default_plan(available_cpus())
    if len(available_cpus()) > 1:
        assert not plan.engine & plan.trainer


def test_hhh_serve_alone_a_gpu_engine_or_remote_engines_pin_nothing_on_auto() -> None:
    assert cpu_plan(gateway(), TrainerSettings(), with_trainer=False, cpu_engine=True) == CpuPlan(None, None)
    assert cpu_plan(gateway(), TrainerSettings(), with_trainer=True, cpu_engine=False) == CpuPlan(None, None)
    remote = gateway(engine_urls=["http://gpu-engine:8000"])
    assert cpu_plan(remote, TrainerSettings(), with_trainer=True, cpu_engine=True) == CpuPlan(None, None)


def test_explicit_lists_pin_even_where_auto_would_not() -> None:
    plan = cpu_plan(gateway(engine_cpus=str(LOWEST)), TrainerSettings(cpus=str(HIGHEST)),
                    with_trainer=True, cpu_engine=False)
    assert plan == CpuPlan(frozenset({LOWEST}), frozenset({HIGHEST}))


def test_overlapping_lists_are_refused() -> None:
    with pytest.raises(UserError, match="share CPU"):
        cpu_plan(gateway(engine_cpus=str(LOWEST)), TrainerSettings(cpus=str(LOWEST)), with_trainer=True,
                 cpu_engine=True)


def test_the_trainer_reaches_the_gateway_on_loopback_when_it_listens_everywhere() -> None:
    assert local_gateway_url("0.0.0.0", 8000) == "http://127.0.0.1:8000"
    assert local_gateway_url("10.0.0.5", 8000) == "http://10.0.0.5:8000"
    assert local_gateway_url("::1", 8000) == "http://[::1]:8000"


@pytest.mark.parametrize(("variables", "message"), [
    ({"HHH_GATEWAY_ENGINE_CPUS": "4096"}, "HHH_GATEWAY_ENGINE_CPUS='4096' names CPU(s) 4096 that this "
                                          "process may not use"),
    ({"HHH_GATEWAY_ENGINE_CPUS": str(LOWEST), "HHH_TRAINER_CPUS": str(LOWEST)}, "share CPU(s)"),
])
def test_hhh_up_with_bad_cpu_lists_stops_at_start_up_saying_what_to_fix(
    tmp_path: Path, variables: dict[str, str], message: str
) -> None:
    env = {**os.environ, "HHH_HOME": str(tmp_path), **variables}
    done = subprocess.run([sys.executable, "-m", "hhh", "up"], env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 1
    assert message in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "models").exists()  # refused before the demo model is built


def test_the_trainer_process_is_told_its_cpus_and_gateway_but_a_configured_gateway_wins(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from hhh.serve import TrainerProcess

    monkeypatch.delenv("HHH_TRAINER_YIELD_TO", raising=False)
    trainer = TrainerProcess(tmp_path / "trainer.log", cpus=frozenset({1, 2, 3}), gateway_url="http://127.0.0.1:8000")
    environment = trainer.environment()
    assert environment["HHH_TRAINER_CPUS"] == "1-3"
    assert environment["HHH_TRAINER_YIELD_TO"] == "http://127.0.0.1:8000"
    monkeypatch.setenv("HHH_TRAINER_YIELD_TO", "http://gateway.example:8000")
    assert trainer.environment()["HHH_TRAINER_YIELD_TO"] == "http://gateway.example:8000"
    monkeypatch.delenv("HHH_TRAINER_CPUS", raising=False)
    assert "HHH_TRAINER_CPUS" not in TrainerProcess(tmp_path / "t.log").environment()  # unplanned: unpinned
