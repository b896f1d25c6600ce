"""Confidence bounds for decisions on sampled numbers (the gate's). Standard library and torch.

A decision "publish only if the gain is real" is a one-sided test: compute a lower confidence
bound L of the mean gain at level c (95 % by default) and act only if L clears the margin. If
the true gain is zero, L exceeds 0 with probability 1 − c, so a no-op passes at most 5 % of
the time at c = 95 %.

- `paired_lower_bound`: the mean of m paired differences D_j (one per held-out prompt:
  candidate minus deployed, each averaged over that prompt's samples) with Student's t,
  L = D̄ − t_{c, m−1} · s_D / √m, s_D the sample standard deviation. Pairing by prompt removes
  the prompts' own spread (an easy prompt scores high for both), which is most of the variance.
- `mean_interval`: a two-sided interval for reports (`hhh eval`), D̄ ± t_{(1+c)/2, m−1} · s/√m:
  the true mean lies below it, and above it, each with probability (1 − c)/2.
- `weighted_lower_bound`: the weighted mean of N differences with weights w (pair weights from
  labeler consensus), normal approximation with the effective sample size n_eff = (Σw)² / Σw²:
  L = d̄_w − z_c · √(Var_w(d) / n_eff).

`student_t_quantile` inverts the t CDF, which for integer degrees of freedom has a closed form
(Abramowitz & Stegun 26.7.3 and 26.7.4), by bisection: no SciPy needed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist

import torch


@dataclass(frozen=True)
class MeanBound:
    """A mean, its standard error and its one-sided lower confidence bound."""

    mean: float
    standard_error: float
    lower: float
    """The lower bound at `confidence`: the true mean is above it with that probability."""
    confidence: float
    n: float
    """How many differences (for a weighted mean: the effective number)."""


def student_t_cdf(t: float, df: int) -> float:
    """P(T ≤ t) for Student's t with ``df`` ≥ 1 degrees of freedom (A&S 26.7.3/26.7.4)."""
    if df < 1:
        raise ValueError(f"degrees of freedom must be at least 1, got {df}")
    theta = math.atan(t / math.sqrt(df))
    sin, cos2 = math.sin(theta), math.cos(theta) ** 2
    if df % 2 == 1:  # A(t|ν) = (2/π)(θ + sin θ (cos θ + (2/3) cos³ θ + ... ))
        term, series = math.cos(theta), 0.0
        for k in range(1, (df - 1) // 2 + 1):
            series += term
            term *= cos2 * (2 * k) / (2 * k + 1)
        a = 2 / math.pi * (theta + sin * series) if df > 1 else 2 / math.pi * theta
    else:  # A(t|ν) = sin θ (1 + ½ cos² θ + (1·3)/(2·4) cos⁴ θ + ... )
        term, series = 1.0, 0.0
        for k in range(0, df // 2):
            series += term
            term *= cos2 * (2 * k + 1) / (2 * k + 2)
        a = sin * series
    return (1 + a) / 2


def student_t_quantile(p: float, df: int) -> float:
    """The t with P(T ≤ t) = p, 0 < p < 1, to about 1e-9."""
    if not 0 < p < 1:
        raise ValueError(f"a quantile needs 0 < p < 1, got {p}")
    low, high = -1e6, 1e6
    for _ in range(200):
        middle = (low + high) / 2
        if student_t_cdf(middle, df) < p:
            low = middle
        else:
            high = middle
        if high - low < 1e-10:
            break
    return (low + high) / 2


def paired_lower_bound(differences: torch.Tensor, confidence: float) -> MeanBound:
    """Lower bound of the mean of (m,) paired differences, m ≥ 2 (module docstring)."""
    m = differences.numel()
    if m < 2:
        raise ValueError(f"a paired bound needs at least 2 differences, got {m}")
    d = differences.double()
    mean, sd = d.mean().item(), d.std().item()
    se = sd / math.sqrt(m)
    lower = mean - student_t_quantile(confidence, m - 1) * se
    return MeanBound(mean, se, lower, confidence, float(m))


@dataclass(frozen=True)
class MeanInterval:
    """A mean with its two-sided confidence interval."""

    mean: float
    lower: float
    upper: float
    confidence: float
    n: int

    def excludes_zero(self) -> bool:
        """Is the mean's sign established at this level (0 outside the interval)?"""
        return self.lower > 0 or self.upper < 0


def mean_interval(values: torch.Tensor, confidence: float) -> MeanInterval:
    """Two-sided Student-t interval of the mean of (m,) values, m ≥ 2 (module docstring)."""
    m = values.numel()
    if m < 2:
        raise ValueError(f"an interval needs at least 2 values, got {m}")
    v = values.double()
    mean = v.mean().item()
    half = student_t_quantile((1 + confidence) / 2, m - 1) * v.std().item() / math.sqrt(m)
    return MeanInterval(mean, mean - half, mean + half, confidence, m)


def weighted_lower_bound(differences: torch.Tensor, weights: torch.Tensor, confidence: float) -> MeanBound:
    """Lower bound of the weighted mean of (N,) differences with (N,) weights > 0 (module docstring)."""
    if differences.numel() == 0:
        raise ValueError("a bound needs at least one difference")
    d, w = differences.double(), weights.double()
    total = w.sum()
    mean = (w * d).sum() / total
    variance = (w * (d - mean) ** 2).sum() / total
    n_eff = (total**2 / (w**2).sum()).item()
    se = math.sqrt(variance.item() / n_eff)
    lower = mean.item() - NormalDist().inv_cdf(confidence) * se
    return MeanBound(mean.item(), se, lower, confidence, n_eff)
