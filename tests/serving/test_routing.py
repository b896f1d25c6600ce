"""The router: own adapter, else global, else base; in-flight counting and draining."""

from __future__ import annotations

import asyncio

from serving.routing import BASE, AdapterRouter, Route
from streams.events import AdapterRef

GLOBAL_1 = Route("hhh-r-global-v1", AdapterRef(scope="global", version=1))
GLOBAL_2 = Route("hhh-r-global-v2", AdapterRef(scope="global", version=2))
ANN_1 = Route("hhh-r-user-ann-v1", AdapterRef(scope="user:ann", version=1))


def test_own_adapter_else_global_else_base() -> None:
    router = AdapterRouter()
    assert router.route("ann", "tiny") == Route("tiny", BASE)
    router.set_base("hhh-r-base")
    assert router.route("ann", "tiny") == Route("hhh-r-base", BASE)
    assert router.set_live(GLOBAL_1) is None
    router.set_live(ANN_1)
    assert (router.route("ann", "tiny"), router.route("bob", "tiny")) == (ANN_1, GLOBAL_1)
    assert router.set_live(GLOBAL_2) == GLOBAL_1
    assert router.route("bob", "tiny") == GLOBAL_2


def test_a_retired_route_drains_when_its_last_request_ends() -> None:
    async def scenario() -> list[str]:
        router, happened = AdapterRouter(), []
        router.set_live(GLOBAL_1)
        first, second = router.acquire("ann", "tiny"), router.acquire("bob", "tiny")
        router.set_live(GLOBAL_2)
        assert router.acquire("carl", "tiny") == GLOBAL_2  # new requests take the new route

        async def unload() -> None:
            assert await router.drained(GLOBAL_1, timeout_s=10)
            happened.append("unloaded")

        waiting = asyncio.create_task(unload())
        await asyncio.sleep(0)
        router.release(first, served=True)
        await asyncio.sleep(0)
        happened.append(f"after first release, in flight {router.in_flight(GLOBAL_1)}")
        router.release(second, served=True)
        await waiting
        return happened

    assert asyncio.run(scenario()) == ["after first release, in flight 1", "unloaded"]


def test_draining_gives_up_after_its_timeout() -> None:
    async def scenario() -> bool:
        router = AdapterRouter()
        router.set_live(GLOBAL_1)
        router.acquire("ann", "tiny")
        return await router.drained(GLOBAL_1, timeout_s=0.01)

    assert asyncio.run(scenario()) is False
