"""The per-caller token bucket and concurrency count, on a clock the test moves."""

from __future__ import annotations

from serving.limits.callers import CallerLimiter
from serving.limits.config import LimitSettings


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def limiter(clock: Clock, **settings: object) -> CallerLimiter:
    return CallerLimiter(LimitSettings(**{"concurrent_per_caller": 0, **settings}), clock)


def admitted(limiter: CallerLimiter, caller: str, count: int) -> int:
    """How many of ``count`` requests (each ended at once) were let in."""
    let_in = 0
    for _ in range(count):
        if limiter.admit(caller) is None:
            limiter.release(caller)
            let_in += 1
    return let_in


def test_the_defaults_are_generous_and_on() -> None:
    settings = LimitSettings()
    assert (settings.rate_per_s, settings.burst, settings.concurrent_per_caller) == (20, 100, 16)


def test_a_caller_gets_its_burst_at_once_then_the_sustained_rate() -> None:
    clock = Clock()
    limits = limiter(clock, rate_per_s=20, burst=100)
    assert admitted(limits, "ann", 150) == 100
    clock.now += 1.0
    assert admitted(limits, "ann", 50) == 20
    clock.now += 60
    assert admitted(limits, "ann", 150) == 100, "a bucket refills to the burst, not beyond"


def test_a_refusal_says_when_to_retry_and_why() -> None:
    clock = Clock()
    limits = limiter(clock, rate_per_s=0.25, burst=1)
    assert limits.admit("ann") is None
    refusal = limits.admit("ann")
    assert refusal is not None and refusal.reason == "rate_limited"
    assert refusal.retry_after_s == 4
    assert refusal.detail == ("rate limit exceeded: at most 0.25 requests/s per caller (bursts of 1); "
                              "retry in 4 s")
    clock.now += 3.0
    assert limits.admit("ann").retry_after_s == 1
    clock.now += 1.0
    assert limits.admit("ann") is None


def test_callers_do_not_share_a_bucket() -> None:
    clock = Clock()
    limits = limiter(clock, rate_per_s=1, burst=3)
    assert admitted(limits, "ann", 10) == 3
    assert admitted(limits, "bob", 10) == 3


def test_a_caller_holds_at_most_its_concurrency_and_a_finished_request_frees_a_slot() -> None:
    clock = Clock()
    limits = limiter(clock, concurrent_per_caller=2, rate_per_s=0)
    assert limits.admit("ann") is None and limits.admit("ann") is None
    refusal = limits.admit("ann")
    assert refusal is not None and refusal.reason == "too_many_concurrent_requests"
    assert refusal.retry_after_s == 1 and "at most 2 at once per caller" in refusal.detail
    assert limits.admit("bob") is None
    limits.release("ann")
    assert limits.admit("ann") is None


def test_a_request_refused_for_concurrency_takes_no_token() -> None:
    clock = Clock()
    limits = limiter(clock, concurrent_per_caller=1, rate_per_s=1, burst=2)
    assert limits.admit("ann") is None
    assert limits.admit("ann").reason == "too_many_concurrent_requests"
    limits.release("ann")
    assert limits.admit("ann") is None, "the second token is still there"


def test_zero_turns_each_limit_off() -> None:
    clock = Clock()
    limits = limiter(clock, rate_per_s=0, concurrent_per_caller=0)
    assert all(limits.admit("ann") is None for _ in range(10_000))


def test_idle_callers_are_forgotten_so_memory_stays_bounded() -> None:
    clock = Clock()
    limits = limiter(clock, rate_per_s=10, burst=10, max_callers=50)
    for caller in range(1000):
        limits.admit(f"caller-{caller}")
        clock.now += 0.01
    assert limits.tracked_callers <= 50
    clock.now += 1.0  # every bucket has refilled: none needs keeping
    limits.admit("ann")
    assert limits.tracked_callers == 1
