"""The pages' routes in-process (no engine): every asset from the package, nothing external."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from serving.app import build_gateway, create_app
from serving.config import GatewaySettings
from streams.outbox import Outbox, OutboxDrainer
from streams.sqlite_log import SqliteEventLog
from tests.fixtures.gateway import API_KEYS

EXTERNAL = re.compile(r"\b(?:https?:)?//[a-z0-9.-]+", re.IGNORECASE)
REFERENCES = re.compile(r"""(?:src|href)="([^"]+)"|from "(\.[^"]+)"|url: '([^']+)'""")


def page_client(tmp_path: Path, **settings: object) -> TestClient:
    """The gateway app for ``settings``, without starting its engines (no lifespan)."""
    gateway_settings = GatewaySettings(
        engine_urls=["http://127.0.0.1:9"], signing_key="test-signing-key-" + "0" * 32, **settings
    )
    outbox = Outbox(tmp_path / "outbox.db", name="pages")
    drainer = OutboxDrainer(outbox, lambda: SqliteEventLog(tmp_path / "events.db"))
    return TestClient(create_app(build_gateway(gateway_settings, outbox, drainer)))


def references(client: TestClient, path: str) -> set[str]:
    """The paths that the page at ``path`` loads, and what its HTML and our scripts load."""
    found: set[str] = set()
    pending = [path]
    while pending:
        current = pending.pop()
        response = client.get(current)
        assert response.status_code == 200, (current, response.status_code)
        ours = current.startswith("/web/") and current.endswith(".js")
        if not (response.headers["content-type"].startswith("text/html") or ours):
            continue  # a stylesheet, an image, or Swagger UI's bundle
        for match in REFERENCES.finditer(response.text):
            reference = next(group for group in match.groups() if group)
            if reference.startswith("data:"):
                continue
            base = current if current.endswith("/") else current.rsplit("/", 1)[0] + "/"
            relative = not reference.startswith("/")
            resolved = base + reference.removeprefix("./") if relative else reference
            if resolved not in found:
                found.add(resolved)
                pending.append(resolved)
    return found


def test_the_chat_page_loads_only_assets_of_the_package(tmp_path: Path) -> None:
    client = page_client(tmp_path)
    loaded = references(client, "/")
    assert {"/web/app.css", "/web/app.js", "/web/api.js", "/web/ranking.js", "/docs"} <= loaded
    for path in ["/", *(path for path in loaded if path.startswith("/web/"))]:
        assert not EXTERNAL.search(client.get(path).text), f"{path} names an external host"


def test_docs_reference_no_external_host_and_their_assets_are_served(tmp_path: Path) -> None:
    client = page_client(tmp_path)
    docs = client.get("/docs")
    assert docs.status_code == 200 and "SwaggerUIBundle" in docs.text
    assert not EXTERNAL.search(docs.text)
    assert references(client, "/docs") >= {
        "/docs/assets/swagger-ui-bundle.js", "/docs/assets/swagger-ui.css",
        "/docs/assets/favicon-32x32.png", "/openapi.json",
    }
    assert client.get("/redoc").status_code == 404  # ReDoc loads from a CDN: off


@pytest.mark.parametrize("auth", [False, True])
def test_the_page_config_says_whether_auth_is_on_without_a_key(tmp_path: Path, auth: bool) -> None:
    keys = {"api_keys": API_KEYS} if auth else {}
    client = page_client(tmp_path, auth=auth, max_n=3, max_tokens=64, **keys)
    response = client.get("/v1/hhh/config")
    assert response.status_code == 200
    assert response.json() == {"auth": auth, "model": "hhh", "max_n": 3, "max_tokens": 64}
    assert "/v1/hhh/config" in client.get("/openapi.json").json()["paths"]
