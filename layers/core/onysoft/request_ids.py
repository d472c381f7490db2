"""The proxy's request id: made once per request (RequestIds, an ASGI middleware), sent back in
`x-onysoft-request-id` on every answer, error or not, and the id of the request's hold and usage record.

`req_` + 24 hex (96 random bits): with the one-letter-and-digit prefixes of its DynamoDB transaction tokens
(`h0req_…`, `creq_…`) it stays within ClientRequestToken's 36 characters.
"""

import contextvars
import uuid

REQUEST_ID_HEADER = "x-onysoft-request-id"
_HEADER = REQUEST_ID_HEADER.encode("latin-1")

_current: contextvars.ContextVar[str] = contextvars.ContextVar("onysoft_request_id", default="")


def new_request_id() -> str:
    return "req_" + uuid.uuid4().hex[:24]


def current_request_id() -> str:
    """The running request's id (a new one outside RequestIds: a caller never goes without one)."""
    return _current.get() or new_request_id()


class RequestIds:
    """ASGI middleware: one request id per HTTP request, readable with current_request_id() for as long as the request
    runs (a stream's body included), and set on the answer's headers in one place."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = new_request_id()
        raw_id = request_id.encode("latin-1")

        async def send_with_id(message: dict) -> None:
            if message["type"] == "http.response.start":
                headers = [(k, v) for k, v in message.get("headers") or [] if k.lower() != _HEADER]
                message = dict(message, headers=[*headers, (_HEADER, raw_id)])
            await send(message)

        token = _current.set(request_id)
        try:
            await self.app(scope, receive, send_with_id)
        finally:
            _current.reset(token)
