"""CPU sets for a vLLM engine and a trainer that share one machine.

On one machine `hhh up` runs a vLLM CPU engine and the trainer side by side. Left to the
scheduler, vLLM's OpenMP threads and torch's threads oversubscribe the cores: on 2 cores a PPO
iteration went from ~3 s alone to ~180 s beside a chatting engine. `plan_cpus` gives each its
own cores instead, from the CPUs this process may use (``os.sched_getaffinity(0)``, which honours
``taskset`` and container cpusets):

======== ======================= ============================= ==========================
CPUs     engine                  trainer                       left to float (gateway ...)
======== ======================= ============================= ==========================
1        the one CPU (shared)    the one CPU (shared)          —
2        cpu 0                   cpu 1                         —
3        cpus 0-1                cpu 2                         —
n >= 4   (n - 1) - (n - 1) // 3  (n - 1) // 3 (the highest)    the lowest cpu
======== ======================= ============================= ==========================

Why: chat is what users wait for, so the engine gets most; PPO is background work that on a
small model stops scaling after a handful of threads, so a third is enough (4 cores: engine 2,
trainer 1; 16: 10 and 5; 64: 42 and 21). From 4 CPUs one is kept out of both sets for what is
neither — the gateway (light asyncio, but on every chat's path), the event log, the kernel's
interrupts — so that none of it queues behind a busy OpenMP thread. Processes that are not
pinned (the gateway) may still run anywhere; only engine and trainer are kept apart.

Each part's setting is ``auto`` (the plan above), ``all`` (not pinned: every CPU, the
behaviour before this module) or a Linux cpu list such as ``0-3,6``. A list names CPUs of its
own; an ``auto`` beside a list takes what the list leaves. Lists are checked here: a CPU this
process may not use, an empty list, or engine and trainer lists that overlap are a `UserError`
that names the setting and the CPUs available.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from dataclasses import dataclass

from common.errors import UserError

AUTO = "auto"
"""Setting value: the default plan's share."""
ALL = "all"
"""Setting value: not pinned (every CPU the process may use)."""

CpuSet = frozenset[int]

_RANGE = re.compile(r"(\d+)(?:-(\d+))?")


def available_cpus() -> CpuSet:
    """The CPUs this process may run on (its affinity mask, not the machine's core count)."""
    return frozenset(os.sched_getaffinity(0))


def format_cpu_list(cpus: Iterable[int]) -> str:
    """``{0, 1, 2, 3, 6}`` -> ``"0-3,6"`` (the Linux cpu list format, as ``taskset -c`` takes)."""
    ordered = sorted(set(cpus))
    parts: list[str] = []
    start = previous = None
    for cpu in [*ordered, None]:
        if previous is not None and cpu == previous + 1:
            previous = cpu
            continue
        if start is not None:
            parts.append(str(start) if start == previous else f"{start}-{previous}")
        start = previous = cpu
    return ",".join(parts)


def parse_cpu_list(text: str, *, setting: str, available: CpuSet) -> CpuSet:
    """The CPUs of a cpu list like ``0-3,6``; a `UserError` naming ``setting`` when it is
    malformed, empty, or names a CPU outside ``available``."""
    cpus: set[int] = set()
    for part in text.replace(" ", "").split(","):
        match = _RANGE.fullmatch(part)
        if match is None:
            raise UserError(f"{setting}={text!r} is not a cpu list; write CPU numbers and ranges "
                            f"like 0-3,6, or {AUTO} or {ALL}")
        first, last = int(match[1]), int(match[2] or match[1])
        if last < first:
            raise UserError(f"{setting}={text!r}: the range {part} runs backwards; write {last}-{first}")
        cpus.update(range(first, last + 1))
    missing = cpus - available
    if missing:
        raise UserError(f"{setting}={text!r} names CPU(s) {format_cpu_list(missing)} that this process "
                        f"may not use; it may use {format_cpu_list(available)}")
    return frozenset(cpus)


@dataclass(frozen=True)
class CpuPlan:
    """Where the engine and the trainer may run; None: not pinned."""

    engine: CpuSet | None
    trainer: CpuSet | None

    def describe(self) -> str:
        """One line for the log, e.g. ``engine on cpus 0, trainer on cpus 1``."""
        def where(cpus: CpuSet | None) -> str:
            return "every CPU (not pinned)" if cpus is None else f"cpus {format_cpu_list(cpus)}"
        return f"engine on {where(self.engine)}, trainer on {where(self.trainer)}"


def default_plan(available: CpuSet) -> CpuPlan:
    """The split of the module docstring's table (engine low, trainer high)."""
    if not available:
        raise ValueError("no CPUs to plan")
    cpus = sorted(available)
    if len(cpus) == 1:
        return CpuPlan(frozenset(cpus), frozenset(cpus))
    if len(cpus) <= 3:
        return CpuPlan(frozenset(cpus[:-1]), frozenset(cpus[-1:]))
    pinned = cpus[1:]  # the lowest floats for the gateway and the rest
    trainer_count = len(pinned) // 3
    return CpuPlan(frozenset(pinned[:-trainer_count]), frozenset(pinned[-trainer_count:]))


def plan_cpus(engine: str, trainer: str, *, available: CpuSet, engine_setting: str,
              trainer_setting: str) -> CpuPlan:
    """The plan for an engine and a trainer co-located on ``available``.

    ``engine``/``trainer``: the settings' values (``auto``, ``all`` or a cpu list), whose names
    ``engine_setting``/``trainer_setting`` the errors quote.
    """
    explicit_engine = _explicit(engine, engine_setting, available)
    explicit_trainer = _explicit(trainer, trainer_setting, available)
    if explicit_engine is not None and explicit_trainer is not None:
        shared = explicit_engine & explicit_trainer
        if shared:
            raise UserError(f"{engine_setting}={engine!r} and {trainer_setting}={trainer!r} share CPU(s) "
                            f"{format_cpu_list(shared)}: give engine and trainer disjoint lists "
                            f"(or set one to {AUTO} to take the rest)")
    default = default_plan(available)
    return CpuPlan(
        engine=_resolve(engine, explicit_engine, explicit_trainer, default.engine, available,
                        engine_setting, trainer_setting),
        trainer=_resolve(trainer, explicit_trainer, explicit_engine, default.trainer, available,
                         trainer_setting, engine_setting),
    )


def pinned_cpus(value: str, *, setting: str, available: CpuSet) -> CpuSet | None:
    """A part that runs alone (`hhh serve`, `hhh train`): a list pins it; ``auto`` and ``all``
    leave it unpinned, as before — there is nothing to share the machine with."""
    return _explicit(value, setting, available)


def checked_cpu_setting(value: str, setting: str) -> str:
    """`value` unchanged if it is ``auto``, ``all`` or a list of CPUs this process may use;
    otherwise the ValueError of `parse_cpu_list`, naming `setting` (for pydantic validators)."""
    pinned_cpus(value, setting=setting, available=available_cpus())
    return value


def _explicit(value: str, setting: str, available: CpuSet) -> CpuSet | None:
    if value.strip().lower() in (AUTO, ALL):
        return None
    return parse_cpu_list(value, setting=setting, available=available)


def _resolve(value: str, own: CpuSet | None, other: CpuSet | None, default: CpuSet | None,
             available: CpuSet, setting: str, other_setting: str) -> CpuSet | None:
    if own is not None:
        return own
    if value.strip().lower() == ALL:
        return None
    if other is None:
        return default
    rest = available - other
    if not rest:
        raise UserError(f"{other_setting} takes every CPU this process may use "
                        f"({format_cpu_list(available)}), which leaves none for {setting}={AUTO}; "
                        f"shorten the list, or set {setting} to a list or {ALL}")
    return frozenset(rest)
