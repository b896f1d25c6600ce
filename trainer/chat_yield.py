"""The trainer yields to chat: it pauses between steps while the gateway is busy answering users.

Co-located with the engine (`hhh up`), every core the trainer computes on is one that chat
cannot use. With ``HHH_TRAINER_YIELD_ABOVE_CHATS`` set, `ChatYield.pause_while_busy` — called
between PPO iterations and between DPO epochs — reads the gateway's
``hhh_chat_requests_in_flight`` (its ``/metrics``, ``HHH_TRAINER_YIELD_TO``; `hhh up` sets its
own gateway) and waits while more chat requests than that are in flight, polling every
``poll_interval_s``. One pause lasts at most ``HHH_TRAINER_YIELD_MAX_PAUSE_S``: steady chat
traffic slows training down but cannot stop it. A gateway that does not answer is not waited
for (training goes on; the first failure of a run of them is logged). Paused seconds go to
``hhh_trainer_yield_seconds_total`` and each pause to the log.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import httpx
from prometheus_client.parser import text_string_to_metric_families

from common.errors import UserError
from trainer.config import TrainerSettings
from trainer.metrics import YIELD_SECONDS

logger = logging.getLogger(__name__)

IN_FLIGHT_METRIC = "hhh_chat_requests_in_flight"
"""The gateway's gauge of chat requests in flight (`serving.metrics.CHAT_IN_FLIGHT`)."""


class ChatYield:
    """Pauses the caller while ``gateway_url`` has more than ``above`` chat requests in flight."""

    def __init__(self, gateway_url: str, above: int, max_pause_s: float, *, poll_interval_s: float = 1.0,
                 clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep) -> None:
        self.gateway_url = gateway_url.rstrip("/")
        self.above = above
        self.max_pause_s = max_pause_s
        self.poll_interval_s = poll_interval_s
        self._clock = clock
        self._sleep = sleep
        self._unreachable = False

    @classmethod
    def from_settings(cls, settings: TrainerSettings) -> ChatYield | None:
        """The one ``HHH_TRAINER_YIELD_*`` asks for; None when yielding is off."""
        if settings.yield_above_chats is None:
            return None
        if settings.yield_to is None:
            raise UserError(f"HHH_TRAINER_YIELD_ABOVE_CHATS={settings.yield_above_chats} needs the gateway to "
                            "watch: set HHH_TRAINER_YIELD_TO to its URL (`hhh up` sets its own)")
        return cls(settings.yield_to, settings.yield_above_chats, settings.yield_max_pause_s)

    def chats_in_flight(self) -> float | None:
        """The gateway's chat requests in flight now; None when it cannot be read."""
        try:
            response = httpx.get(f"{self.gateway_url}/metrics", timeout=2.0)
            response.raise_for_status()
        except httpx.HTTPError as error:
            if not self._unreachable:
                logger.warning("cannot read %s/metrics to yield to chat (%s); training without pausing "
                               "until it answers", self.gateway_url, error)
            self._unreachable = True
            return None
        self._unreachable = False
        for family in text_string_to_metric_families(response.text):
            if family.name == IN_FLIGHT_METRIC:
                return sum(sample.value for sample in family.samples)
        return 0.0

    def pause_while_busy(self, where: str) -> float:
        """Wait while chat is busy, at most ``max_pause_s``; the seconds waited.

        ``where``: what is about to run, for the log (e.g. ``PPO iteration 3``).
        """
        started = self._clock()
        paused = False
        while (in_flight := self.chats_in_flight()) is not None and in_flight > self.above:
            so_far = self._clock() - started
            if so_far >= self.max_pause_s:
                logger.info("chat still busy (%d requests in flight) after %.0f s "
                            "(HHH_TRAINER_YIELD_MAX_PAUSE_S): resuming %s", in_flight, so_far, where)
                break
            self._sleep(min(self.poll_interval_s, self.max_pause_s - so_far))
            paused = True
        if not paused:
            return 0.0
        waited = self._clock() - started
        YIELD_SECONDS.inc(waited)
        logger.info("yielded %.1f s to chat before %s", waited, where)
        return waited
