"""Confidence bounds: the t distribution against tabulated values, and bounds that hold their
stated level on simulated data."""

from __future__ import annotations

import pytest
import torch

from trainer.stats import (
    mean_interval,
    paired_lower_bound,
    student_t_cdf,
    student_t_quantile,
    weighted_lower_bound,
)


@pytest.mark.parametrize(("df", "p", "expected"), [
    (1, 0.95, 6.3138), (2, 0.95, 2.9200), (3, 0.975, 3.1824), (10, 0.95, 1.8125),
    (30, 0.95, 1.6973), (63, 0.95, 1.6694), (200, 0.99, 2.3452),
])
def test_t_quantiles_match_the_tables(df: int, p: float, expected: float) -> None:
    assert student_t_quantile(p, df) == pytest.approx(expected, abs=2e-4)
    assert student_t_cdf(expected, df) == pytest.approx(p, abs=2e-4)
    assert student_t_cdf(0.0, df) == pytest.approx(0.5)


def test_a_zero_mean_clears_zero_about_one_time_in_twenty() -> None:
    """Under no difference the 95 % lower bound is above 0 in ≈ 5 % of samples, for both rules."""
    generator = torch.Generator().manual_seed(0)
    trials = 2000
    paired = sum(paired_lower_bound(torch.randn(12, generator=generator), 0.95).lower > 0
                 for _ in range(trials))
    weights = torch.rand(40, generator=generator) + 0.2
    weighted = sum(weighted_lower_bound(torch.randn(40, generator=generator), weights, 0.95).lower > 0
                   for _ in range(trials))
    assert 0.03 * trials < paired < 0.07 * trials, paired
    assert 0.03 * trials < weighted < 0.075 * trials, weighted


def test_a_real_difference_is_bounded_away_from_zero() -> None:
    generator = torch.Generator().manual_seed(1)
    bound = paired_lower_bound(0.5 + 0.3 * torch.randn(64, generator=generator), 0.95)
    assert 0.4 < bound.lower < bound.mean < 0.6 and bound.n == 64


def test_identical_verdicts_give_a_zero_bound() -> None:
    bound = weighted_lower_bound(torch.zeros(10), torch.ones(10), 0.95)
    assert (bound.mean, bound.standard_error, bound.lower, bound.n) == (0.0, 0.0, 0.0, 10.0)
    with pytest.raises(ValueError, match="at least 2"):
        paired_lower_bound(torch.zeros(1), 0.95)


def test_a_two_sided_interval_covers_the_mean_at_its_level() -> None:
    """95 % intervals of samples of N(0.3, 1) contain 0.3 in ≈ 95 % of trials, and miss it on
    each side about equally often."""
    generator = torch.Generator().manual_seed(2)
    intervals = [mean_interval(0.3 + torch.randn(10, generator=generator), 0.95) for _ in range(2000)]
    below = sum(i.upper < 0.3 for i in intervals)
    above = sum(i.lower > 0.3 for i in intervals)
    assert 30 < below < 80 and 30 < above < 80, (below, above)
    assert all(i.lower < i.mean < i.upper and i.n == 10 for i in intervals)


def test_an_interval_excludes_zero_only_for_a_real_difference() -> None:
    generator = torch.Generator().manual_seed(3)
    assert mean_interval(1.0 + 0.5 * torch.randn(32, generator=generator), 0.95).excludes_zero()
    assert not mean_interval(torch.tensor([-1.0, 1.0, -0.5, 0.5]), 0.95).excludes_zero()
    with pytest.raises(ValueError, match="at least 2"):
        mean_interval(torch.zeros(1), 0.95)
