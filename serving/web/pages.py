"""Routes of the chat page, its assets, the offline API docs and the page's configuration.

The chat page (``static/index.html``; ``app.js`` the chat, ``answers.js`` the answer cards,
``ranking.js`` the ranking, ``queue.js`` the labeler queue, ``api.js`` the API) uses only the
public API — chat completions (streamed), ``/v1/feedback``, ``/v1/rankings``,
``/v1/labeling/next`` and ``/v1/models`` to check a key — plus ``GET /v1/hhh/config``, which
tells it what it cannot ask the API: whether auth is on
(a login form for an API key, or a user-name field), the model name and the limits. The
configuration holds no secret, so it needs no key.

``/docs`` is FastAPI's Swagger UI page with its script and stylesheet served from the
``swagger-ui-bundle-v2`` wheel instead of a CDN (FastAPI's "self-hosting JavaScript and CSS
for docs"); ReDoc, which has no such wheel, is off.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, Field
from swagger_ui_bundle import swagger_ui_path

from serving.config import GatewaySettings

STATIC_DIR = Path(__file__).parent / "static"
ASSETS_URL = "/web"
"""Where the chat page's scripts and stylesheet are served."""
DOCS_ASSETS_URL = "/docs/assets"
"""Where Swagger UI's files are served."""
PAGE_ROUTES = frozenset({"/", "/docs", "/v1/hhh/config"})
"""The pages' routes, for the gateway's metric labels."""


class PageConfig(BaseModel):
    """``GET /v1/hhh/config``: what the chat page needs to know before its first request."""

    auth: bool = Field(
        description="True: send 'Authorization: Bearer <key>'; false: name yourself in `user`."
    )
    model: str = Field(description="The model name to ask for.")
    max_n: int = Field(description="The most answers one request may ask for.")
    max_tokens: int = Field(description="The most tokens one answer may have.")


def install_pages(app: FastAPI, settings: GatewaySettings) -> None:
    """Mount the chat page, its assets, the offline ``/docs`` and ``/v1/hhh/config`` on ``app``.

    ``app`` must be created with ``docs_url=None`` (FastAPI's own ``/docs`` uses a CDN).
    """
    config = PageConfig(
        auth=settings.auth, model=settings.served_model_name, max_n=settings.max_n,
        max_tokens=settings.max_tokens,
    )

    @app.get("/", include_in_schema=False)
    async def chat_page() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html", headers={"cache-control": "no-cache"})

    @app.get("/v1/hhh/config", tags=["pages"])
    async def page_config() -> PageConfig:
        """Whether auth is on, the model name and the limits (for the chat page; no key needed)."""
        return config

    @app.get("/docs", include_in_schema=False)
    async def api_docs(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        return get_swagger_ui_html(
            openapi_url=f"{root}{app.openapi_url}",
            title=f"{app.title} — API docs",
            swagger_js_url=f"{root}{DOCS_ASSETS_URL}/swagger-ui-bundle.js",
            swagger_css_url=f"{root}{DOCS_ASSETS_URL}/swagger-ui.css",
            swagger_favicon_url=f"{root}{DOCS_ASSETS_URL}/favicon-32x32.png",
        )

    app.mount(ASSETS_URL, StaticFiles(directory=STATIC_DIR), name="web-assets")
    app.mount(DOCS_ASSETS_URL, StaticFiles(directory=str(swagger_ui_path)), name="docs-assets")
