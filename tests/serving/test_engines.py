"""The engine pool: health checks, least-loaded choice, and a clear error with none up."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from serving.engines import EnginePool, EngineUnavailable


def models_app(alive: set[str]) -> httpx.MockTransport:
    """Engines answering /v1/models like vLLM does, for the URLs in ``alive`` only."""
    def handle(request: httpx.Request) -> httpx.Response:
        base = f"{request.url.scheme}://{request.url.host}:{request.url.port}"
        if base not in alive:
            raise httpx.ConnectError("connection refused", request=request)
        return httpx.Response(200, json={"data": [{"id": "demo", "parent": None},
                                                  {"id": "global-v1", "parent": "demo"}]})
    return httpx.MockTransport(handle)


URLS = ["http://e1:1", "http://e2:2", "http://e3:3"]


def test_requests_go_to_the_least_loaded_engine_that_is_up() -> None:
    async def scenario() -> list[str]:
        async with httpx.AsyncClient(transport=models_app({URLS[0], URLS[1]})) as client:
            pool = EnginePool(URLS, client)
            await pool.check_all()
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

    chosen = asyncio.run(scenario())
    assert URLS[2] not in chosen  # down
    assert set(chosen[:2]) == {URLS[0], URLS[1]}  # the second lease avoids the busy engine


def test_with_no_engine_up_the_error_names_each_engines_problem() -> None:
    async def scenario() -> None:
        async with httpx.AsyncClient(transport=models_app(set())) as client:
            pool = EnginePool(URLS[:2], client)
            await pool.check_all()
            with pytest.raises(EngineUnavailable, match="http://e1:1: ConnectError") as error:
                async with pool.lease():
                    pass
            assert "retry shortly" in str(error.value) and "http://e2:2" in str(error.value)

    asyncio.run(scenario())


def test_an_engine_comes_back_after_it_answers_again() -> None:
    alive: set[str] = set()

    async def scenario() -> None:
        async with httpx.AsyncClient(transport=models_app(alive)) as client:
            pool = EnginePool(URLS[:1], client)
            await pool.check_all()
            assert not pool.ready
            alive.add(URLS[0])
            await pool.check_all()
            assert pool.ready

    asyncio.run(scenario())
