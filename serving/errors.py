"""The typed error a service raises; the app turns it into an HTTP response."""


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
