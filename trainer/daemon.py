"""The training daemon: one round after another of ingest → reward model → PPO → gate → publish.

A round (`TrainingDaemon.run_round`):

1. **ingest** the ``completions`` and ``feedback`` topics into the dataset store (offsets
   committed after the rows are stored);
2. **reward model**: refresh it when enough new pairs arrived (`refresh_reward_model`); without
   any reward-model version the round ends here;
3. **global round** under the ``global`` scope lock, only on new evidence (`trainer.evidence`:
   a changed reward model or ``min_new_prompts`` new training prompts since the last attempt):
   policy and reference start from the adapter deployed for ``global`` now (the base model on
   the first round); with ``HHH_TRAINER_GLOBAL_METHOD`` ``dpo`` or ``dpo+ppo`` the policy is
   first trained by DPO on every user's training pairs (weighted as for a personal adapter),
   then (``ppo``, the default, or ``dpo+ppo``) by PPO:
   β from where the deployed adapter's round left it, PPO on recent training
   prompts, harm-probing ones repeated up to ``HHH_PPO_HARMFUL_SHARE`` of them
   (`trainer.red_team.with_harmful_share`), on the reward model's score less
   ``HHH_PPO_HARM_PENALTY`` for an answer the gate's harmlessness judge calls harmful
   (`trainer.judges.penalise_harm`), then the gate
   (`trainer.gate`) on held-out prompts and pairs and on the red team
   (`trainer.red_team`: harmlessness may not get worse); a candidate that passes is
   published (adapter store write, then the ``adapters`` event); with
   ``HHH_TRAINER_RESUME_UNPROVEN``, one refused only for want of evidence is kept, and the next
   round's policy (not its reference) starts from it instead (`trainer.unproven`);
4. **per-user DPO** for every user with at least ``min_user_pairs`` training pairs of their
   own and ``min_new_user_pairs`` new ones, under that user's scope lock: DPO from the deployed
   global adapter (also the reference), published as ``user:<id>`` if it agrees with the
   user's held-out pairs (at least ``min_heldout_pairs``) better than what the user is served
   now — their own deployed adapter, or the global one — with the lower confidence bound of
   the weighted agreement gain above ``user_agreement_margin`` (`trainer.stats`: a candidate
   no better passes at most 1 − confidence of the time; with N = 32 pairs, a true gain of 0.15
   whose verdicts differ on a share q = 0.3 passes about half the time, a gain of 0.25 at
   q = 0.35 84 %), and if it is no less harmless than the global adapter on the red team.

With ``HHH_TRAINER_YIELD_ABOVE_CHATS`` set, each PPO iteration and DPO epoch first waits
(bounded) while the gateway is busy with chat (`trainer.chat_yield`).

Every step's effect is durable before the next begins, and nothing is visible half-written:
the dataset commits per batch, reward models and adapters are written under a temporary name
and renamed. A trainer killed anywhere therefore restarts the round from ingest, which skips
what it already stored. The one gap — killed after an adapter was stored but before its event
was sent — is closed at start-up: `announce_current` re-sends each scope's current version
(replicas ignore a version they already serve). Verdicts, published or refused, go to the run
record ``<runs_dir>/<round>.jsonl`` and to Prometheus.
"""

from __future__ import annotations

import logging
import tempfile
import time
import uuid
from collections import defaultdict
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path

import torch

from serving.adapters.publish import announce, publish_adapter
from serving.adapters.store import AdapterStore
from streams.log import EventLog
from trainer.chat_yield import ChatYield
from trainer.config import DPOSettings, GateSettings, PPOSettings, RewardSettings, TrainerSettings
from trainer.devices import placement_of
from trainer.evidence import AttemptLog, Evidence
from trainer.gate import (
    harmlessness_reason,
    measure,
    measure_harmlessness,
    pair_preferences,
    weighted_share,
)
from trainer.judges import Judge, load_harmlessness_judge, penalise_harm
from trainer.locks import ScopeBusy, scope_lock
from trainer.metrics import GATE_STAT, LABELER_AGREEMENT, LAST_ROUND, ROUNDS, SCOPE_FAILURES, VERDICTS
from trainer.preferences.ingest import ingest_available
from trainer.preferences.pairs import Consensus
from trainer.preferences.store import DatasetStore, PreferencePair
from trainer.red_team import harm_probing, red_team_prompts, with_harmful_share
from trainer.reward.refresh import refresh_reward_model
from trainer.reward.scorer import RewardScorer
from trainer.reward.versions import RewardModelStore
from trainer.rl.dpo import DPOTrainer, TextPair, load_dpo_stack
from trainer.rl.models import PolicyStack, load_policy_stack, lora_config
from trainer.rl.ppo import PPOTrainer
from trainer.rl.record import RunRecord
from trainer.rl.rollout import Conversation
from trainer.stats import weighted_lower_bound
from trainer.unproven import UnprovenStore

logger = logging.getLogger(__name__)


@dataclass
class RoundReport:
    """What one round did: a line per step, and the adapters it published."""

    round_id: str
    steps: list[str] = field(default_factory=list)
    published: list[str] = field(default_factory=list)
    """Labels of published versions, e.g. ``global@3``."""
    failed: list[str] = field(default_factory=list)
    """Scopes whose step failed with an error (the round went on without them)."""

    def note(self, line: str) -> None:
        logger.info("round %s: %s", self.round_id, line)
        self.steps.append(line)


def use_threads(threads: int | None) -> None:
    """Run torch on ``threads`` CPU threads from now on (None: leave torch's choice)."""
    if threads:
        torch.set_num_threads(threads)


def export_agreement(consensus: Consensus) -> None:
    """Labeler agreement to Prometheus (``hhh_trainer_labeler_agreement``); NaN where undefined."""
    scores = consensus.labeler_agreement.values()
    for stat, value in (("krippendorff_alpha", consensus.krippendorff_alpha),
                        ("pairwise", consensus.pairwise_agreement),
                        ("lowest_labeler", min(scores, default=None)),
                        ("labelers", len(consensus.labeler_agreement)),
                        ("down_weighted", sum(w < 1 for w in consensus.labeler_weight.values()))):
        LABELER_AGREEMENT.labels(stat=stat).set(float("nan") if value is None else value)


class TrainingDaemon:
    """Runs training rounds against one event log, dataset store and adapter store."""

    def __init__(
        self,
        event_log: EventLog,
        adapters: AdapterStore,
        base_model: Path,
        settings: TrainerSettings,
        reward: RewardSettings,
        ppo: PPOSettings,
        dpo_settings: DPOSettings,
        gate: GateSettings,
    ) -> None:
        self.event_log = event_log
        self.adapters = adapters
        self.base_model = base_model
        self.settings = settings
        self.reward = reward
        self.ppo = ppo
        self.dpo = dpo_settings
        self.gate = gate
        self.attempts = AttemptLog(settings.runs_dir)
        self.unproven = UnprovenStore(settings.runs_dir)
        """The global candidate a round left unproven, which the next one resumes
        (``HHH_TRAINER_RESUME_UNPROVEN``)."""
        self._harmlessness: Judge | None = None
        self.chat_yield = ChatYield.from_settings(settings)
        """Pauses PPO and DPO while chat is busy (``HHH_TRAINER_YIELD_*``); None: never."""
        self.placement = placement_of(settings)
        """Where every step computes (``HHH_TRAINER_DEVICE``/``_DTYPE``): a GPU the settings
        name that torch does not see is a `UserError` here, at start-up."""
        logger.info("trainer computes on %s, base weights in %s, gradient checkpointing %s",
                    self.placement.device, str(self.placement.dtype).removeprefix("torch."),
                    "on" if self.placement.gradient_checkpointing else "off")

    def announce_current(self) -> None:
        """Re-send every scope's current version (closes a kill between store write and event)."""
        for scope in self.adapters.scopes():
            version = self.adapters.state(scope).desired
            if version is not None:
                announce(self.event_log, self.adapters, self.adapters.get(scope, version))

    def run_round(self) -> RoundReport:
        """One round (module docstring); returns what it did."""
        report = RoundReport(time.strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:6])
        dataset = DatasetStore(self.settings.dataset_path)
        try:
            stored = ingest_available(self.event_log, dataset, idle_s=self.settings.ingest_idle_s,
                                      max_s=self.settings.ingest_max_s)
            report.note(f"ingested {stored} new events")
            outcome = refresh_reward_model(self.settings, self.reward, progress=False,
                                           placement=self.placement)
            report.note(f"reward model: {outcome.message}")
            if RewardModelStore(self.reward.store_dir).latest() is None:
                report.note("no reward model yet: no policy round")
                return report
            pair_set = dataset.build_pairs(**self.settings.pair_options())
            if scaled := pair_set.scaled_voices.get("train"):
                report.note("pairs: " + ", ".join(
                    f"{voice or '(unknown)'}'s weights × {factor:.2f}"
                    for voice, factor in sorted(scaled.items()))
                            + f" (each held more than {self.settings.max_voice_share:g} of the "
                            "training weight; HHH_TRAINER_MAX_VOICE_SHARE)")
            export_agreement(pair_set.consensus)
            pairs = pair_set.pairs
            self._locked(report, "global", partial(self._global_round, report, dataset, pairs))
            for user, user_pairs in self._users_with_enough_pairs(pairs).items():
                self._locked(report, f"user:{user}",
                             partial(self._user_round, report, dataset, user, user_pairs))
        finally:
            dataset.close()
        ROUNDS.inc()
        LAST_ROUND.set_to_current_time()
        return report

    # -- global round --------------------------------------------------------------------------

    def _global_round(self, report: RoundReport, dataset: DatasetStore, pairs: list[PreferencePair]) -> None:
        s = self.settings
        every_prompt = dataset.prompts("train", eval_percent=s.eval_percent, limit=2**62)
        prompts = every_prompt[: s.prompt_pool]
        heldout = dataset.prompts("eval", eval_percent=s.eval_percent, limit=s.gate_prompts)
        if len(prompts) < self.ppo.rollout_batch_size or not heldout:
            report.note(f"global: {len(prompts)} training and {len(heldout)} held-out prompts; PPO needs "
                        f"{self.ppo.rollout_batch_size} (HHH_PPO_ROLLOUT_BATCH_SIZE) and at least one")
            return
        deployed = self.adapters.state("global").desired
        deployed_metrics = self.adapters.get("global", deployed).metrics if deployed else {}
        evidence = Evidence(RewardModelStore(self.reward.store_dir).latest(), len(every_prompt))
        since = self.attempts.last("global") or Evidence.from_metrics(deployed_metrics)
        if why := evidence.lacks_news(since, s.min_new_prompts):
            report.note(f"global: nothing new to train on: {why} (HHH_TRAINER_MIN_NEW_PROMPTS); "
                        "no round")
            return
        by_dpo, by_ppo = "dpo" in s.global_method, "ppo" in s.global_method
        train_pairs: list[TextPair] = []
        if by_dpo:
            train_pairs, _ = self._texts(dataset, [p for p in pairs if p.split == "train"])
            if not train_pairs:
                report.note("global: no training pairs for DPO (HHH_TRAINER_GLOBAL_METHOD "
                            f"{s.global_method}); no round")
                return
        resumed = self.unproven.resumable(deployed) if s.resume_unproven else None
        if resumed:
            report.note(f"global: resuming the candidate round {resumed.round_id} left unproven "
                        f"({resumed.rounds} round(s) of PPO against the version deployed now)")
        use_threads(self.ppo.threads)
        stack = load_policy_stack(
            self.base_model, self._path_of("global", deployed),
            lora_config(self.ppo.lora_rank, self.ppo.lora_alpha, self.ppo.lora_target_modules),
            share_base=True, seed=self.ppo.seed, placement=self.placement,
            resume=resumed.folder if resumed else None,
        )
        record_path = s.runs_dir / f"{report.round_id}.jsonl"
        if by_dpo:
            report.note(f"global: DPO on {len(train_pairs)} training pairs")
            use_threads(self.dpo.threads)
            DPOTrainer(stack, self.dpo, RunRecord(record_path, "dpo:global")).train(train_pairs,
                                                                                 pause=self._pause)
        scorer = RewardScorer.from_store(self.reward, share_base_with=stack.peft_model)
        kl_beta = resumed.kl_beta if resumed else deployed_metrics.get("kl_beta", self.ppo.kl_coef)
        if by_ppo:
            use_threads(self.ppo.threads)
            reward = (penalise_harm(scorer.score, self._harmlessness_judge(), self.ppo.harm_penalty)
                      if self.ppo.harm_penalty else scorer.score)
            trainer = PPOTrainer(stack, reward, self.ppo, RunRecord(record_path, "ppo"),
                                 initial_beta=kl_beta)
            trainer.train(self._with_harmful_share(report, dataset, every_prompt, prompts),
                          s.ppo_iterations, pause=self._pause)
            kl_beta = trainer.kl_controller.beta
        heldout_pairs, weights = self._texts(dataset, [p for p in pairs if p.split == "eval"])
        decision = measure(stack, scorer.score, heldout, heldout_pairs, weights, self.gate,
                           missing_eos_penalty=self.ppo.missing_eos_penalty,
                           red_team=self._red_team(dataset), harmlessness=self._harmlessness_judge())
        RunRecord(record_path, "global").write({"gate": decision.as_metrics()})
        self.attempts.record("global", evidence)
        for stat, value in decision.manifest_metrics().items():
            GATE_STAT.labels(scope_kind="global", stat=stat).set(value)
        ppo_rounds = (resumed.rounds if resumed else 0) + 1
        metrics = {**decision.manifest_metrics(), **evidence.as_metrics(),
                   "kl_beta": kl_beta, "ppo_rounds": float(ppo_rounds)}
        self._publish_or_refuse(report, dataset, stack, "global", deployed, decision.publish,
                                decision.reasons, metrics)
        if s.resume_unproven and decision.unproven:
            self.unproven.keep(stack, deployed, ppo_rounds, kl_beta, report.round_id)
            report.note(f"global: kept the candidate as unproven ({ppo_rounds} round(s) of PPO, nothing "
                        "measured worse): the next round with new evidence resumes it")
        else:
            self.unproven.discard()

    # -- per-user DPO --------------------------------------------------------------------------

    def _users_with_enough_pairs(self, pairs: list[PreferencePair]) -> dict[str, list[PreferencePair]]:
        by_user: dict[str, list[PreferencePair]] = defaultdict(list)
        for pair in pairs:
            if pair.user_id is not None:
                by_user[pair.user_id].append(pair)
        return {user: user_pairs for user, user_pairs in sorted(by_user.items())
                if sum(p.split == "train" for p in user_pairs) >= self.settings.min_user_pairs}

    def _user_round(
        self, report: RoundReport, dataset: DatasetStore, user: str, pairs: list[PreferencePair]
    ) -> None:
        scope = f"user:{user}"
        train_pairs = [p for p in pairs if p.split == "train"]
        own = self.adapters.state(scope).desired
        evidence = Evidence(None, len(train_pairs))
        since = self.attempts.last(scope) or Evidence.from_metrics(
            self.adapters.get(scope, own).metrics if own else {})
        if why := evidence.lacks_news(since, self.settings.min_new_user_pairs):
            report.note(f"{scope}: nothing new to train on: {why} (HHH_TRAINER_MIN_NEW_USER_PAIRS)")
            return
        train, _ = self._texts(dataset, train_pairs)
        heldout, weights = self._texts(dataset, [p for p in pairs if p.split == "eval"])
        if len(heldout) < self.gate.min_heldout_pairs:
            report.note(f"{scope}: {len(heldout)} held-out pairs of their own; the gate needs "
                        f"{self.gate.min_heldout_pairs} (HHH_GATE_MIN_HELDOUT_PAIRS)")
            return
        global_version = self.adapters.state("global").desired
        use_threads(self.dpo.threads)
        stack = load_dpo_stack(self.base_model, self._path_of("global", global_version), self.dpo,
                               self.placement)
        record = RunRecord(self.settings.runs_dir / f"{report.round_id}.jsonl", f"dpo:{scope}")
        DPOTrainer(stack, self.dpo, record).train(train, pause=self._pause)
        # Against what the user is served now: their own adapter, or the global one.
        candidate_prefers, deployed_prefers = pair_preferences(stack, heldout, self.gate,
                                                               versus=self._path_of(scope, own))
        pair_weights = torch.tensor(weights)
        candidate = weighted_share(candidate_prefers, pair_weights)
        deployed = weighted_share(deployed_prefers, pair_weights)
        gain = weighted_lower_bound(candidate_prefers.float() - deployed_prefers.float(), pair_weights,
                                    self.gate.confidence)
        against = f"{scope}@{own}" if own else "the global adapter"
        reasons = [] if gain.lower > self.settings.user_agreement_margin else [
            f"agreement with {user}'s {len(heldout)} held-out pairs {candidate:.3f} against {against}'s "
            f"{deployed:.3f}: the {self.gate.confidence:.0%} lower bound of the gain {gain.lower:+.3f} "
            f"(mean {gain.mean:+.3f}) does not exceed {self.settings.user_agreement_margin:.3f} "
            "(HHH_TRAINER_USER_AGREEMENT_MARGIN)"]
        # Check 5 of the gate against the global adapter the candidate started from.
        red_team = self._red_team(dataset)
        harmless = (measure_harmlessness(stack, self._harmlessness_judge(), red_team, self.gate)
                    if len(red_team) >= 2 else None)
        if harmless is not None and (why := harmlessness_reason(
                harmless.gain, harmless.candidate, harmless.deployed, len(red_team), self.gate)):
            reasons.append(why)
        record.write({"gate": {"publish": not reasons, "reasons": reasons, "candidate": candidate,
                               "deployed": deployed, "compared_with": against,
                               "agreement_gain": asdict(gain), "heldout_pairs": len(heldout),
                               "harmlessness_gain": asdict(harmless.gain) if harmless else None}})
        self.attempts.record(scope, evidence)
        GATE_STAT.labels(scope_kind="user", stat="heldout_pair_agreement").set(candidate)
        GATE_STAT.labels(scope_kind="user", stat="deployed_pair_agreement").set(deployed)
        metrics = {"heldout_pair_agreement": candidate, "deployed_pair_agreement": deployed,
                   "agreement_gain": gain.mean, "agreement_gain_lower": gain.lower,
                   "compared_version": float(own or 0), "global_version": float(global_version or 0),
                   **evidence.as_metrics()}
        self._publish_or_refuse(report, dataset, stack, scope, self.adapters.state(scope).desired,
                                not reasons, reasons, metrics)

    # -- shared --------------------------------------------------------------------------------

    def _publish_or_refuse(
        self, report: RoundReport, dataset: DatasetStore, stack: PolicyStack, scope: str,
        parent: int | None, publish: bool, reasons: list[str] | tuple[str, ...],
        metrics: dict[str, float],
    ) -> None:
        """Publish the candidate (its manifest names the data it was trained on) or record why not."""
        scope_kind = "global" if scope == "global" else "user"
        if not publish:
            VERDICTS.labels(scope_kind=scope_kind, outcome="refused").inc()
            report.note(f"{scope}: candidate refused: {'; '.join(reasons)}")
            return
        with tempfile.TemporaryDirectory(prefix=".candidate-", dir=self.settings.runs_dir) as tmp:
            folder = Path(tmp) / "adapter"
            stack.save_policy(folder)
            manifest = publish_adapter(
                self.adapters, self.event_log, folder, scope, base_model=self.base_model, parent=parent,
                metrics={**metrics, "dataset_events": float(dataset.event_count())},
                trained_on=dataset.positions(),
            )
        VERDICTS.labels(scope_kind=scope_kind, outcome="published").inc()
        report.published.append(f"{scope}@{manifest.version}")
        report.note(f"{scope}: published version {manifest.version} (parent {parent})")

    @property
    def _pause(self) -> Callable[[str], object] | None:
        return None if self.chat_yield is None else self.chat_yield.pause_while_busy

    def _red_team(self, dataset: DatasetStore) -> list[Conversation]:
        return red_team_prompts(self.gate, dataset, eval_percent=self.settings.eval_percent)

    def _with_harmful_share(self, report: RoundReport, dataset: DatasetStore,
                            every_prompt: list[Conversation], pool: list[Conversation]) -> list[Conversation]:
        """PPO's prompts: ``pool`` with harm-probing prompts repeated up to ``HHH_PPO_HARMFUL_SHARE``."""
        if not self.ppo.harmful_share:
            return pool
        harmful = harm_probing(every_prompt, dataset, self._harmlessness_judge().group_of,
                               eval_percent=self.settings.eval_percent)
        balanced = with_harmful_share(pool, harmful, self.ppo.harmful_share)
        if len(balanced) > len(pool):
            report.note(f"global: PPO samples from {len(pool)} prompts and {len(balanced) - len(pool)} "
                        f"repeats of the {len(harmful)} harm-probing ones (HHH_PPO_HARMFUL_SHARE "
                        f"{self.ppo.harmful_share:g})")
        return balanced

    def _harmlessness_judge(self) -> Judge:
        """The gate's harmlessness judge, loaded once (a classifier is not small)."""
        if self._harmlessness is None:
            self._harmlessness = load_harmlessness_judge(self.gate.harmlessness_judge,
                                                         label=self.gate.harmlessness_judge_label)
        return self._harmlessness

    def _path_of(self, scope: str, version: int | None) -> Path | None:
        return None if version is None else self.adapters.path(scope, version)

    @staticmethod
    def _texts(
        dataset: DatasetStore, pairs: list[PreferencePair]
    ) -> tuple[list[TextPair], list[float]]:
        """The pairs with their prompt and completion texts, and their weights."""
        texts = dataset.completion_texts({c for p in pairs for c in (p.chosen_id, p.rejected_id)})
        return ([TextPair(texts[p.chosen_id][0], texts[p.chosen_id][1], texts[p.rejected_id][1], p.weight)
                 for p in pairs], [p.weight for p in pairs])

    def _locked(self, report: RoundReport, scope: str, step: Callable[[], None]) -> None:
        """Run `step` holding the scope's lock; skip it (noted) when another trainer holds it.

        A scope that fails is contained: the error goes to the log (with its traceback), the
        run record, the report and a metric, and the round goes on with the next scope. One
        user's bad data (or a broken adapter folder) must not stop training for everyone.
        """
        try:
            with scope_lock(self.settings.lock_dir, scope):
                step()
        except ScopeBusy as busy:
            report.note(f"{scope}: skipped: {busy}")
        except Exception as error:  # noqa: BLE001 - contained to this scope, see the docstring
            logger.exception("round %s: %s failed", report.round_id, scope)
            SCOPE_FAILURES.labels(scope_kind="global" if scope == "global" else "user").inc()
            RunRecord(self.settings.runs_dir / f"{report.round_id}.jsonl", scope).write(
                {"failed": f"{type(error).__name__}: {error}"})
            report.failed.append(scope)
            report.note(f"{scope}: failed, nothing published: {type(error).__name__}: {error}")
