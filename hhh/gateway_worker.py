"""One gateway worker process: ``python -m hhh.gateway_worker <index>``, started by `hhh serve`
with ``HHH_GATEWAY_WORKERS`` > 1 (see `hhh.workers`), never by hand.

It is a whole gateway, configured by its environment as any gateway is (``HHH_GATEWAY_*``,
``HHH_ADAPTERS_*``, ``HHH_EVENTS_*``); the parent sets in it the engines, this worker's replica
id and outbox and the multiprocess metrics folder. It listens with ``SO_REUSEPORT`` on the
port its siblings share.
"""

from __future__ import annotations

import logging
import sys

from common.errors import UserError
from serving.adapters.config import AdapterSettings
from serving.config import GatewaySettings
from streams.config import EventLogSettings

from hhh.serve import run_gateway
from hhh.workers import reuseport_socket


def main(index: int) -> None:
    """Serve as gateway worker ``index`` until SIGTERM."""
    logging.basicConfig(level=logging.INFO, format=f"%(asctime)s %(levelname)s w{index} %(name)s: %(message)s")
    settings = GatewaySettings()
    listening = reuseport_socket(settings.host, settings.port)
    run_gateway(settings, AdapterSettings(), EventLogSettings(), outbox_name=f"gateway-w{index}",
                sockets=[listening])


if __name__ == "__main__":
    try:
        main(int(sys.argv[1]))
    except UserError as error:
        sys.exit(f"gateway worker: {error}")
