"""OpenAI's error envelope: every error a client can get is {"error": {message, type, code, param}}."""

import json
from dataclasses import dataclass, field


@dataclass
class GatewayError(Exception):
    status: int
    message: str
    type: str = "invalid_request_error"
    code: str | None = None
    param: str | None = None
    headers: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        super().__init__(self.message)

    def envelope(self) -> dict:
        return envelope(self.message, self.type, self.code, self.param)

    def body(self) -> bytes:
        return json.dumps(self.envelope()).encode()


def envelope(message: str, type: str, code: str | None = None, param: str | None = None) -> dict:
    return {"error": {"message": message, "type": type, "code": code, "param": param}}


INVALID_KEY_MESSAGE = "Invalid API key. Send your Onysoft key as 'Authorization: Bearer sk-ony-…'."


def invalid_api_key(message: str = INVALID_KEY_MESSAGE) -> GatewayError:
    return GatewayError(401, message, "invalid_request_error", "invalid_api_key")


def key_leaked(message: str) -> GatewayError:
    """A key revoked by a leak report (onysoft.leaks): 401, its own code, and a message that says where it was."""
    return GatewayError(401, message, "invalid_request_error", "key_leaked")


def bad_request(message: str, param: str | None = None, code: str | None = None) -> GatewayError:
    return GatewayError(400, message, "invalid_request_error", code, param)


def not_found(message: str, code: str = "not_found", param: str | None = None) -> GatewayError:
    return GatewayError(404, message, "invalid_request_error", code, param)


def method_not_allowed(method: str, path: str) -> GatewayError:
    return GatewayError(405, f"Method {method} is not allowed on {path}.", "invalid_request_error",
                        "method_not_allowed")


def capacity_exhausted() -> GatewayError:
    # DynamoDB kept throttling after every retry (provisioned tables above their capacity, auto scaling catching
    # up; docs/BENCHMARKS.md section 4): nothing was held or charged, and a retry in a moment is the answer.
    return GatewayError(503, "The gateway is over its capacity for a moment; nothing was charged. Retry shortly.",
                        "server_error", "capacity_exhausted", headers={"Retry-After": "2"})


def internal_error() -> GatewayError:
    # Never a stack trace or internal detail: the request id in the logs is how we find it.
    return GatewayError(500, "The gateway had an internal error. Try again; if it persists, contact support.",
                        "server_error", "internal_error")
