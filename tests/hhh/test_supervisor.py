"""`ProcessSupervisor` on a stand-in child: restarted when it exits, and — with a probe — when
it runs but stays unhealthy after it had come up (a vLLM API server over a dead engine core)."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from hhh.supervisor import ProcessSupervisor
from serving.engine import EngineHealth
from tests.fixtures.waiting import wait_for


class StandIn:
    """A child whose liveness and health the test sets; counts its starts."""

    def __init__(self) -> None:
        self.running = self.listening = self.healthy = False
        self.up_on_start = False
        self.starts = 0

    def start(self) -> None:
        up = self.up_on_start  # else still starting
        self.running, self.listening, self.healthy = True, up, up
        self.starts += 1

    def stop(self) -> None:
        self.running = False

    def log_tail(self, lines: int = 40) -> str:
        return ""

    def health(self) -> EngineHealth:
        if not self.listening:
            return EngineHealth(answered=False, problem="GET /health failed: ConnectError")
        return EngineHealth(answered=True, problem=None if self.healthy
                            else "GET /health answered 503: its engine core is dead")

    def come_up(self) -> None:
        self.listening = self.healthy = True




@pytest.fixture
def child() -> Iterator[StandIn]:
    yield StandIn()


def supervise(child: StandIn, *, probe: bool = True) -> ProcessSupervisor:
    supervisor = ProcessSupervisor(child, "engine", check_interval_s=0.01,
                                   probe=child.health if probe else None, restart_unhealthy_after_s=0.2)
    supervisor.start()
    return supervisor


def test_a_child_that_runs_but_stays_unhealthy_after_coming_up_is_restarted(
    child: StandIn, caplog: pytest.LogCaptureFixture
) -> None:
    supervisor = supervise(child)
    try:
        child.listening = True  # it answers, already unhealthy: its core died at once
        wait_for(lambda: child.starts == 2, 30, "the restart", interval_s=0.01)
        assert supervisor.restarts == 1
        assert "the engine stayed unhealthy for" in caplog.text
        assert "its engine core is dead" in caplog.text
    finally:
        supervisor.stop()


def test_a_child_still_starting_is_not_restarted_for_being_unhealthy(child: StandIn) -> None:
    """Not answering since its start (a vLLM server loading its model, its port closed):
    however often it is checked, with no grace at all, it is not restarted for that."""
    supervisor = ProcessSupervisor(child, "engine", probe=child.health, restart_unhealthy_after_s=0)
    child.start()
    assert [supervisor._restart_reason() for _ in range(5)] == [None] * 5
    child.come_up()
    assert supervisor._restart_reason() is None
    child.listening = False  # stalled or closed after it had come up: that counts
    assert "stayed unhealthy" in supervisor._restart_reason()


def test_a_child_that_never_answers_after_starting_is_restarted_at_the_start_timeout(
    child: StandIn, caplog: pytest.LogCaptureFixture
) -> None:
    """A vLLM server hung while loading (its port never opens) is restarted, not waited for
    forever; one that is merely slow to start is left alone until then (the test above)."""
    supervisor = ProcessSupervisor(child, "engine", check_interval_s=0.01, probe=child.health,
                                   start_timeout_s=0.3)
    supervisor.start()
    try:
        wait_for(lambda: child.starts == 3, 30, "two restarts of a child that never answers", interval_s=0.01)
        assert "the engine has not answered" in caplog.text and "ConnectError" in caplog.text
        child.up_on_start = True
        child.come_up()  # this start (or, if a restart is under way, the next) answers
        wait_for(lambda: supervisor._answered_since_start, 30, "the child to answer", interval_s=0.01)
        starts = child.starts
        time.sleep(0.5)
        assert child.starts == starts, "a child that answered is not restarted by the start timeout"
    finally:
        supervisor.stop()


def test_a_child_that_recovers_within_the_window_is_left_alone(child: StandIn) -> None:
    supervisor = ProcessSupervisor(child, "engine", probe=child.health, restart_unhealthy_after_s=3600)
    child.start()
    child.come_up()
    assert supervisor._restart_reason() is None
    child.healthy = False
    assert supervisor._restart_reason() is None  # unhealthy, but not for long enough
    assert supervisor._unhealthy_since is not None
    child.healthy = True
    assert supervisor._restart_reason() is None and supervisor._unhealthy_since is None


def test_without_a_probe_only_an_exit_restarts(child: StandIn, caplog: pytest.LogCaptureFixture) -> None:
    supervisor = supervise(child, probe=False)
    try:
        child.running = False
        wait_for(lambda: child.starts == 2, 30, "the restart", interval_s=0.01)
        assert "the engine exited; restarting it (restart 1)" in caplog.text
    finally:
        supervisor.stop()
