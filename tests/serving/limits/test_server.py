"""The gateway's HTTP server closes idle, slow and oversized connections (real uvicorn, raw sockets)."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from common.processes import free_port
from serving.limits.config import LimitSettings
from tests.fixtures.gateway import RunningGateway, start_gateway

HELD_TOO_LONG_S = 30
"""What no idle or slow connection may be held for (with a deadline of 0.5 s configured)."""


@pytest.fixture
def strict(tmp_path: Path) -> Iterator[RunningGateway]:
    """A gateway (no engine) with half-second header and body deadlines."""
    limits = LimitSettings(header_timeout_s=0.5, body_timeout_s=0.5, max_header_bytes=8192)
    running = start_gateway(f"http://127.0.0.1:{free_port()}", tmp_path, ready_path="/healthz",
                            limits=limits)
    yield running
    running.stop()


def connect(running: RunningGateway) -> socket.socket:
    host, port = running.url.removeprefix("http://").split(":")
    connection = socket.create_connection((host, int(port)))
    connection.settimeout(HELD_TOO_LONG_S)
    return connection


def read_all(connection: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection (a timeout fails the test)."""
    received = b""
    try:
        while chunk := connection.recv(65_536):
            received += chunk
    except ConnectionResetError:
        pass
    return received


def test_idle_and_trickling_connections_are_closed_at_the_header_deadline(strict: RunningGateway) -> None:
    connections = [connect(strict) for _ in range(200)]
    try:
        for connection in connections[::2]:  # headers begun, never finished
            connection.sendall(b"GET /healthz HTTP/1.1\r\nhost: gateway\r\nx-slow: ")
        assert [read_all(connection) for connection in connections] == [b""] * 200
    finally:
        for connection in connections:
            connection.close()
    assert httpx.get(f"{strict.url}/healthz").status_code == 200, "the server still serves"
    metrics = httpx.get(f"{strict.url}/metrics").text
    assert 'hhh_rejected_requests_total{reason="header_timeout",route="other"} 200.0' in metrics


def test_a_keep_alive_connection_gets_a_fresh_header_deadline_per_request(strict: RunningGateway) -> None:
    with connect(strict) as connection:
        connection.sendall(b"GET /healthz HTTP/1.1\r\nhost: gateway\r\n\r\n")
        assert connection.recv(65_536).startswith(b"HTTP/1.1 200")
        connection.sendall(b"GET /healthz HTTP/1.1\r\nhost: gateway\r\n")  # never finished
        assert read_all(connection) == b""


def test_a_body_that_does_not_arrive_in_time_gets_408_with_the_reason(strict: RunningGateway) -> None:
    with connect(strict) as connection:
        connection.sendall(b"POST /v1/feedback HTTP/1.1\r\nhost: gateway\r\n"
                           b"content-type: application/json\r\ncontent-length: 100\r\n\r\n{\"vote\"")
        response = read_all(connection)
    head, _, body = response.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408"), response
    detail = json.loads(body)["detail"]
    assert detail == "the request body did not arrive within 0.5 s of its headers; send the whole body at once"


@pytest.mark.parametrize("end", [b"\r\n\r\n", b""], ids=["complete", "unfinished"])
def test_headers_over_the_cap_get_431(strict: RunningGateway, end: bytes) -> None:
    with connect(strict) as connection:
        connection.sendall(b"GET /healthz HTTP/1.1\r\nhost: gateway\r\nx-big: " + b"a" * 10_000 + end)
        response = read_all(connection)
    assert response.startswith(b"HTTP/1.1 431") and response.endswith(b"headers are too large")


def test_a_large_body_in_the_same_reads_as_its_headers_is_not_taken_for_headers(
    strict: RunningGateway,
) -> None:
    with connect(strict) as connection:
        body = json.dumps({"model": "gpt-4", "messages": [{"role": "user", "content": "x" * 100_000}]})
        connection.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nhost: gateway\r\nconnection: close\r\n"
                           b"content-type: application/json\r\ncontent-length: %d\r\n\r\n%s"
                           % (len(body), body.encode()))
        assert read_all(connection).startswith(b"HTTP/1.1 404")


def test_a_request_that_arrives_in_time_is_served_whole(strict: RunningGateway) -> None:
    body = {"model": "gpt-4", "messages": [{"role": "user", "content": "x" * 500_000}]}
    response = httpx.post(f"{strict.url}/v1/chat/completions", json=body)
    assert response.status_code == 404 and "model 'gpt-4' does not exist" in response.json()["detail"]


def test_beyond_its_connection_cap_the_server_answers_503(tmp_path: Path) -> None:
    running = start_gateway(f"http://127.0.0.1:{free_port()}", tmp_path, ready_path="/healthz",
                            limits=LimitSettings(max_connections=3))
    try:
        held = [connect(running) for _ in range(3)]
        assert httpx.get(f"{running.url}/healthz").status_code == 503
        for connection in held:
            connection.close()
        deadline = time.monotonic() + HELD_TOO_LONG_S
        while httpx.get(f"{running.url}/healthz").status_code != 200:
            assert time.monotonic() < deadline, "the server did not take connections again"
            time.sleep(0.05)
    finally:
        running.stop()


def test_pipelined_requests_are_all_answered(strict: RunningGateway) -> None:
    with connect(strict) as connection:
        connection.sendall(b"GET /healthz HTTP/1.1\r\nhost: gateway\r\n\r\n" * 3
                           + b"GET /healthz HTTP/1.1\r\nhost: gateway\r\nconnection: close\r\n\r\n")
        assert read_all(connection).count(b"HTTP/1.1 200 OK") == 4
