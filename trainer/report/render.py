"""Write an evaluation (`trainer.report.compare`) as a report folder an operator can read:

- ``report.md``: the setup, a table per version (judge score, paired difference to the
  baseline and its verdict, reward-model score, KL to base, truncation, the gate's decision),
  the scores per request group, recent gate verdicts from the run records, example answers,
  and the method;
- ``summary.json``: the same figures, for scripts;
- ``scores.png`` (the distribution of judge scores per version), ``over_time.png`` (judge score
  per version against when it was published, the base as a band) and ``kl_vs_reward.png``
  (mean KL to the base against the reward-model score, or the judge score without a reward
  model), drawn with matplotlib's non-interactive backend.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402 - after choosing the backend

from trainer.report.compare import BASE, VersionResult  # noqa: E402
from trainer.stats import MeanInterval  # noqa: E402

PLOTS = ("scores.png", "over_time.png", "kl_vs_reward.png")


@dataclass(frozen=True)
class ReportSetup:
    """What the report compared, and how (its heading)."""

    base_model: str
    prompt_source: str
    prompts: int
    samples_per_prompt: int
    temperature: float
    max_new_tokens: int
    confidence: float
    judge: str
    reward_model_version: int | None
    created_at: datetime


@dataclass(frozen=True)
class GateVerdict:
    """One gate verdict from a training round's run record."""

    at: datetime
    scope: str
    publish: bool
    reasons: list[str]


def gate_history(runs_dir: Path, limit: int = 20) -> list[GateVerdict]:
    """The latest ``limit`` gate verdicts in ``runs_dir/*.jsonl``, newest first."""
    verdicts = []
    for path in sorted(runs_dir.glob("*.jsonl")) if runs_dir.is_dir() else []:
        for line in path.read_text().splitlines():
            try:
                entry = json.loads(line)
            except json.JSONDecodeError:  # a line cut by a killed trainer
                continue
            gate = entry.get("gate")
            if isinstance(gate, dict) and "publish" in gate:
                kind = str(entry.get("kind", "?"))  # global verdicts: "global" (once "ppo")
                verdicts.append(GateVerdict(datetime.fromtimestamp(float(entry.get("time", 0)), timezone.utc),
                                            "global" if kind == "ppo" else kind.removeprefix("dpo:"),
                                            bool(gate["publish"]), [str(r) for r in gate.get("reasons", [])]))
    return sorted(verdicts, key=lambda v: v.at, reverse=True)[:limit]


def write_report(out_dir: Path, setup: ReportSetup, results: Sequence[VersionResult],
                 history: Sequence[GateVerdict]) -> Path:
    """Write the report folder (module docstring); returns the path of ``report.md``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    _plot_scores(out_dir / PLOTS[0], setup, results)
    _plot_over_time(out_dir / PLOTS[1], setup, results)
    _plot_kl_vs_reward(out_dir / PLOTS[2], setup, results)
    summary = {"setup": asdict(setup), "versions": [_result_json(r) for r in results],
               "gate_history": [asdict(v) for v in history]}
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
    report = out_dir / "report.md"
    report.write_text(_markdown(setup, results, history))
    return report


def _result_json(result: VersionResult) -> dict[str, Any]:
    data = asdict(result)
    data.pop("judge_scores")  # per answer: in the plot, not the summary
    return data


def _interval(interval: MeanInterval | None, signed: bool = False) -> str:
    if interval is None:
        return "—"
    sign = "+" if signed else ""
    return f"{interval.mean:{sign}.3f} [{interval.lower:{sign}.3f}, {interval.upper:{sign}.3f}]"


def _markdown(setup: ReportSetup, results: Sequence[VersionResult], history: Sequence[GateVerdict]) -> str:
    level = f"{setup.confidence:.0%}"
    baseline = results[0].label
    lines = [
        "# hhh evaluation report", "",
        f"- created {setup.created_at:%Y-%m-%d %H:%M:%S} on base model `{setup.base_model}`",
        f"- {setup.prompts} held-out prompts ({setup.prompt_source}), {setup.samples_per_prompt} "
        f"answers per prompt and version, temperature {setup.temperature:g}, at most "
        f"{setup.max_new_tokens} tokens",
        f"- judge: **{setup.judge}** (not the reward model); reward model: "
        + (f"version {setup.reward_model_version}" if setup.reward_model_version else "none yet"),
        f"- intervals: two-sided {level}, over prompts; differences paired by prompt against "
        f"`{baseline}`", "",
        "## Versions", "",
        f"| version | published | {setup.judge} | vs `{baseline}` | verdict | reward model | "
        "KL to base (nats) | cut at limit | gate |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        created = f"{r.created_at:%Y-%m-%d %H:%M}" if r.created_at else "—"
        lines.append(f"| `{r.label}` | {created} | {_interval(r.judge)} | "
                     f"{_interval(r.versus_baseline, signed=True)} | {r.verdict} | {_interval(r.reward)} | "
                     f"{_interval(r.kl_to_base)} | {r.truncated_share:.0%} | {r.gate} |")
    groups = sorted({g for r in results for g in r.judge_by_group})
    if len(groups) > 1:
        lines += ["", "## By request group", "",
                  "| version | " + " | ".join(groups) + " |", "|---|" + "---|" * len(groups)]
        for r in results:
            lines.append(f"| `{r.label}` | " + " | ".join(_interval(r.judge_by_group.get(g)) for g in groups) + " |")
    lines += ["", "## Plots", "", "![Judge scores per version](scores.png)", "",
              "![Judge score per version over time](over_time.png)", "",
              "![KL to base against reward](kl_vs_reward.png)", "", "## Recent gate verdicts", ""]
    if history:
        lines += ["| when | scope | verdict | why not |", "|---|---|---|---|"]
        lines += [f"| {v.at:%Y-%m-%d %H:%M} | `{v.scope}` | {'published' if v.publish else 'refused'} | "
                  f"{'; '.join(v.reasons).replace('|', '/') or '—'} |" for v in history]
    else:
        lines.append("No training round has recorded a gate verdict yet.")
    lines += ["", "## Example answers", ""]
    for r in results:
        lines.append(f"**`{r.label}`**")
        lines += [f"- {_quote(user)} → {_quote(answer)}" for user, answer in r.samples]
        lines.append("")
    lines += ["## Method", "",
              f"Each version answered every prompt {setup.samples_per_prompt} times, sampled with its "
              "own seed. A version's figure is the mean over prompts of its per-prompt mean, with a "
              f"Student-t interval over prompts. Against `{baseline}` the per-prompt differences "
              f"give a paired interval: **better** when it lies above 0, **worse** below, otherwise "
              f"no measurable difference; a version no different from `{baseline}` is called better "
              f"(or worse) at most {(1 - setup.confidence) / 2:.1%} of the time. The reward model is "
              "what the policy was trained against, so a reward gain without a judge gain is a sign "
              "of over-optimisation.", ""]
    return "\n".join(lines)


def _quote(text: str, limit: int = 140) -> str:
    text = " ".join(text.split()).replace("|", "/")
    return "“" + (text if len(text) <= limit else text[: limit - 1] + "…") + "”"


def _plot_scores(path: Path, setup: ReportSetup, results: Sequence[VersionResult]) -> None:
    figure, axes = plt.subplots(figsize=(7, 4))
    every = [s for r in results for s in r.judge_scores]
    low, high = min(every), max(every)
    bins = 20 if high > low else 1
    for r in results:
        axes.hist(r.judge_scores, bins=bins, range=(low - 0.5, high + 0.5), histtype="step",
                  linewidth=1.6, label=f"{r.label} (mean {r.judge.mean:.2f})")
    axes.set(xlabel=setup.judge, ylabel="answers", title="Judge scores per version")
    axes.legend()
    _save(figure, path)


def _plot_over_time(path: Path, setup: ReportSetup, results: Sequence[VersionResult]) -> None:
    figure, axes = plt.subplots(figsize=(7, 4))
    dated = [r for r in results if r.created_at is not None]
    for r in results:
        if r.label == BASE:
            axes.axhspan(r.judge.lower, r.judge.upper, color="grey", alpha=0.2)
            axes.axhline(r.judge.mean, color="grey", linestyle="--", label="base model")
    if dated:
        axes.errorbar([r.created_at for r in dated], [r.judge.mean for r in dated],
                      yerr=_error_bars([r.judge for r in dated]), fmt="o-", capsize=4, label="versions")
        for r in dated:
            axes.annotate(r.label, (r.created_at, r.judge.mean), textcoords="offset points", xytext=(4, 6))
        first, last = min(r.created_at for r in dated), max(r.created_at for r in dated)
        pad = max((last - first) * 0.1, timedelta(minutes=30))  # one version: not a span of years
        axes.set_xlim(first - pad, last + pad)
        figure.autofmt_xdate()
    axes.set(xlabel="published", ylabel=setup.judge,
             title=f"Judge score per version over time ({setup.confidence:.0%} intervals)")
    axes.legend()
    _save(figure, path)


def _plot_kl_vs_reward(path: Path, setup: ReportSetup, results: Sequence[VersionResult]) -> None:
    figure, axes = plt.subplots(figsize=(7, 4))
    with_reward = all(r.reward is not None for r in results)
    scores = [r.reward if with_reward else r.judge for r in results]
    kls = [r.kl_to_base for r in results]
    axes.errorbar([k.mean for k in kls], [s.mean for s in scores], xerr=_error_bars(kls),
                  yerr=_error_bars(scores), fmt="o", capsize=4)
    for r, k, s in zip(results, kls, scores):
        axes.annotate(r.label, (k.mean, s.mean), textcoords="offset points", xytext=(4, 6))
    ylabel = f"reward model v{setup.reward_model_version}" if with_reward else f"{setup.judge} (no reward model)"
    axes.set(xlabel="KL to base, nats per answer", ylabel=ylabel, title="Drift from the base against reward")
    _save(figure, path)


def _error_bars(intervals: Sequence[MeanInterval]) -> list[list[float]]:
    return [[i.mean - i.lower for i in intervals], [i.upper - i.mean for i in intervals]]


def _save(figure: plt.Figure, path: Path) -> None:
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
