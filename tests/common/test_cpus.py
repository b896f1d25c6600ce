"""The CPU planner: the default split for 2 to 64 CPUs, and the settings' lists checked."""

from __future__ import annotations

import pytest

from common.cpus import CpuPlan, default_plan, format_cpu_list, parse_cpu_list, pinned_cpus, plan_cpus
from common.errors import UserError

ENGINE, TRAINER = "HHH_GATEWAY_ENGINE_CPUS", "HHH_TRAINER_CPUS"


def cpus(n: int) -> frozenset[int]:
    return frozenset(range(n))


def plan(engine: str, trainer: str, available: frozenset[int]) -> CpuPlan:
    return plan_cpus(engine, trainer, available=available, engine_setting=ENGINE, trainer_setting=TRAINER)


@pytest.mark.parametrize(("n", "engine", "trainer"), [
    (2, {0}, {1}),
    (3, {0, 1}, {2}),
    (4, {1, 2}, {3}),
    (16, set(range(1, 11)), set(range(11, 16))),
    (64, set(range(1, 43)), set(range(43, 64))),
])
def test_the_default_plan_gives_engine_and_trainer_disjoint_sets(n: int, engine: set[int], trainer: set[int]) -> None:
    planned = plan("auto", "auto", cpus(n))
    assert (planned.engine, planned.trainer) == (engine, trainer)
    assert not planned.engine & planned.trainer
    assert len(planned.engine) >= len(planned.trainer)


def test_from_four_cpus_the_lowest_is_left_to_the_gateway() -> None:
    for n in (4, 5, 8, 16, 33, 64):
        planned = default_plan(cpus(n))
        assert cpus(n) - planned.engine - planned.trainer == {0}


def test_the_plan_follows_the_processes_own_affinity_not_cpu_numbers_from_zero() -> None:
    planned = plan("auto", "auto", frozenset({4, 5, 6, 7}))
    assert (planned.engine, planned.trainer) == ({5, 6}, {7})


def test_one_cpu_is_shared_because_nothing_else_is_possible() -> None:
    assert plan("auto", "auto", cpus(1)) == CpuPlan(frozenset({0}), frozenset({0}))


def test_an_explicit_list_wins_and_auto_takes_what_it_leaves() -> None:
    assert plan("0-3,6", "auto", cpus(8)) == CpuPlan(frozenset({0, 1, 2, 3, 6}), frozenset({4, 5, 7}))
    assert plan("auto", "7", cpus(8)) == CpuPlan(frozenset(range(7)), frozenset({7}))
    assert plan("0-1", "2-3", cpus(8)) == CpuPlan(frozenset({0, 1}), frozenset({2, 3}))


def test_all_leaves_that_part_unpinned_as_before() -> None:
    assert plan("all", "all", cpus(4)) == CpuPlan(None, None)
    assert plan("all", "auto", cpus(2)) == CpuPlan(None, frozenset({1}))
    assert pinned_cpus("auto", setting=TRAINER, available=cpus(4)) is None
    assert pinned_cpus("1-2", setting=TRAINER, available=cpus(4)) == {1, 2}


def test_a_cpu_the_process_may_not_use_is_refused_with_the_ones_it_may() -> None:
    with pytest.raises(UserError, match=r"HHH_TRAINER_CPUS='5' names CPU\(s\) 5 .* it may use 0-1"):
        plan("auto", "5", cpus(2))


def test_overlapping_lists_are_refused_naming_the_shared_cpus() -> None:
    with pytest.raises(UserError, match=r"share CPU\(s\) 2-3"):
        plan("0-3", "2-5", cpus(8))


def test_a_list_that_takes_every_cpu_leaves_none_for_auto() -> None:
    with pytest.raises(UserError, match="leaves none for HHH_TRAINER_CPUS=auto"):
        plan("0-1", "auto", cpus(2))


@pytest.mark.parametrize("text", ["", "one", "0-", "3-1", "0,,1"])
def test_malformed_lists_are_refused(text: str) -> None:
    with pytest.raises(UserError, match=ENGINE):
        parse_cpu_list(text, setting=ENGINE, available=cpus(4))


def test_lists_format_and_parse_back() -> None:
    assert format_cpu_list({0, 1, 2, 3, 6, 8, 9}) == "0-3,6,8-9"
    assert format_cpu_list({5}) == "5"
    assert parse_cpu_list("0-3,6, 8-9", setting=ENGINE, available=cpus(10)) == {0, 1, 2, 3, 6, 8, 9}
