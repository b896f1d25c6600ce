"""Confidence bounds: the t distribution against tabulated values, and bounds that hold their
stated level on simulated data."""

from __future__ import annotations

import pytest
import torch

from trainer.stats import paired_lower_bound, student_t_cdf, student_t_quantile, weighted_lower_bound


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
