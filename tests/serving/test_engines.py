"""The engine pool: health checks, least-loaded choice, and a clear error with none up.

The "engines" are tiny aiohttp servers on loopback answering /v1/models (and, where a test
says so, /health) as vLLM does.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
from aiohttp import web

from serving import metrics
from serving.engines import EnginePool, EngineUnavailable
from common.processes import free_port


async def models(_: web.Request) -> web.Response:
    return web.json_response({"data": [{"id": "demo", "parent": None}, {"id": "global-v1", "parent": "demo"}]})


@asynccontextmanager
async def fake_engine(
    port: int, health: list[int] | None = None, listing: list[object] | None = None
) -> AsyncIterator[str]:
    """A server answering /v1/models on ``port`` while the block runs (with ``listing``, the JSON
    ``listing[0]`` holds at the time); with ``health``, also /health, with the status
    ``health[0]`` holds at the time (no /health without it: 404)."""
    app = web.Application()
    if listing is None:
        app.router.add_get("/v1/models", models)
    else:
        async def answer_listing(_: web.Request) -> web.Response:
            return web.json_response(listing[0])

        app.router.add_get("/v1/models", answer_listing)
    if health is not None:
        async def answer_health(_: web.Request) -> web.Response:
            return web.Response(status=health[0])

        app.router.add_get("/health", answer_health)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


def url(port: int) -> str:
    return f"http://127.0.0.1:{port}"


def test_requests_go_to_the_least_loaded_engine_that_is_up() -> None:
    ports = [free_port() for _ in range(3)]

    async def scenario() -> list[str]:
        async with fake_engine(ports[0]), fake_engine(ports[1]):
            pool = EnginePool([url(p) for p in ports])
            await pool.start()
            try:
                assert pool.ready and pool.base_model == "demo"
                chosen = []
                async with pool.lease() as first:
                    chosen.append(first.url)
                    async with pool.lease() as second:
                        chosen.append(second.url)
                        async with pool.lease() as third:
                            chosen.append(third.url)
                assert all(engine.in_flight == 0 for engine in pool.engines)
                return chosen
            finally:
                await pool.stop()

    chosen = asyncio.run(scenario())
    assert url(ports[2]) not in chosen  # nothing listens there
    assert set(chosen[:2]) == {url(ports[0]), url(ports[1])}  # the second lease avoids the busy one


def test_with_no_engine_up_the_error_names_each_engines_problem() -> None:
    dead = [url(free_port()) for _ in range(2)]

    async def scenario() -> None:
        pool = EnginePool(dead)
        await pool.start()
        try:
            with pytest.raises(EngineUnavailable, match="ClientConnectorError") as error:
                async with pool.lease():
                    pass
            assert "retry shortly" in str(error.value)
            assert all(address in str(error.value) for address in dead)
        finally:
            await pool.stop()

    asyncio.run(scenario())


def test_an_engine_comes_back_once_it_answers_again() -> None:
    port = free_port()

    async def scenario() -> None:
        pool = EnginePool([url(port)])
        await pool.start()
        try:
            assert not pool.ready
            async with fake_engine(port):
                await pool.check_all()
                assert pool.ready
            await pool.check_all()
            assert not pool.ready
        finally:
            await pool.stop()

    asyncio.run(scenario())


def test_an_engine_whose_api_server_answers_but_whose_core_is_dead_is_down_with_the_reason() -> None:
    """vLLM's API server keeps listing its models after its engine core died; its /health
    answers 503 then (see serving/engines.py). The pool takes that engine out of rotation,
    names the reason, and takes it back once /health answers 200 again."""
    port, health = free_port(), [200]

    async def scenario() -> None:
        async with fake_engine(port, health):
            pool = EnginePool([url(port)])
            await pool.start()
            try:
                assert pool.ready
                health[0] = 503
                await pool.check_all()
                assert not pool.ready
                with pytest.raises(EngineUnavailable, match="the engine core is dead") as error:
                    async with pool.lease():
                        pass
                assert url(port) in str(error.value)
                assert metrics.ENGINE_UP.labels(engine=url(port))._value.get() == 0
                health[0] = 200
                await pool.check_all()
                assert pool.ready and pool.engines[0].last_error is None
            finally:
                await pool.stop()

    asyncio.run(scenario())


def test_an_answer_of_another_shape_marks_the_engine_down_and_the_checks_go_on() -> None:
    """Another server on the engine's port (or a proxy's error page) answers /v1/models with
    JSON that is not vLLM's: the engine is down with the reason, and the checks take it back
    once the answer is right again."""
    port, answer = free_port(), [{"data": ["not", "a", "model"]}]

    async def scenario() -> None:
        async with fake_engine(port, listing=answer):
            pool = EnginePool([url(port)], interval_s=0.05)
            try:
                await pool.start()
                assert not pool.ready
                assert "AttributeError" in str(pool.engines[0].last_error)
                answer[0] = {"data": [{"id": "demo", "parent": None}]}
                for _ in range(100):  # the background checks, not a call of ours, take it back
                    await asyncio.sleep(0.05)
                    if pool.ready:
                        break
                assert pool.ready and pool.engines[0].base_model == "demo"
            finally:
                await pool.stop()

    asyncio.run(scenario())
