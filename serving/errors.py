"""The typed error a service raises; the app turns it into an HTTP response."""

from starlette.responses import JSONResponse


class GatewayError(Exception):
    """A request the gateway refuses or cannot serve.

    ``status``: the HTTP status; ``reason``: a short label for metrics and the OpenAI error
    ``code``; ``detail``: a sentence that tells the caller what to fix.
    """

    def __init__(self, status: int, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.reason = reason
        self.detail = detail


def error_response(
    status: int, reason: str, detail: str, headers: dict[str, str] | None = None
) -> JSONResponse:
    """The gateway's error body: ``detail`` for plain HTTP clients, an OpenAI-style ``error``
    object for the ``openai`` client (its ``type`` by status, its ``code`` the reason)."""
    kind = "rate_limit_error" if status == 429 else "invalid_request_error" if status < 500 else "server_error"
    body = {"detail": detail, "error": {"message": detail, "type": kind, "code": reason}}
    return JSONResponse(body, status_code=status, headers=headers)
