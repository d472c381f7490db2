"""Who is calling: the authorizer turns a key into a CallerContext; the proxy reads it back.

API Gateway hands the authorizer's context to the proxy; the Lambda Web Adapter passes API Gateway's
request context in the `x-amzn-request-context` header. The proxy still re-reads the key record by the
hash of the Authorization header it received, so a forged context can never grant anything.
"""

import json
from dataclasses import asdict, dataclass

REQUEST_CONTEXT_HEADER = "x-amzn-request-context"


@dataclass(frozen=True)
class CallerContext:
    key_id: str
    key_type: str
    account_id: str
    currency: str
    markup_bp: int
    rpm: int = 0  # 0 = no limit
    tpm: int = 0
    models: tuple[str, ...] = ()  # empty = every model
    expires_at: str = ""  # empty = never
    spend_limit_micros: int = 0  # 0 = no spend limit
    limit_reset: str = ""  # daily | weekly | monthly; empty = never
    fallbacks: tuple[str, ...] = ()  # the key's default fallback models
    shards: int = 1  # the account's balance shards (onysoft.balances)
    max_parallel: int = 0  # the key's requests in flight at once (onysoft.parallel); 0 = no limit
    account_max_parallel: int = 0  # the account's, over all its keys; 0 = no limit

    def to_authorizer_context(self) -> dict[str, str | int]:
        """API Gateway allows only strings, numbers and booleans in an authorizer's context."""
        flat = asdict(self)
        flat["models"] = ",".join(self.models)
        flat["fallbacks"] = ",".join(self.fallbacks)
        return flat

    @classmethod
    def from_authorizer_context(cls, context: dict) -> "CallerContext":
        models = str(context.get("models") or "")
        return cls(
            key_id=str(context["key_id"]), key_type=str(context["key_type"]),
            account_id=str(context["account_id"]), currency=str(context["currency"]),
            markup_bp=int(context["markup_bp"]), rpm=int(context.get("rpm") or 0),
            tpm=int(context.get("tpm") or 0),
            models=tuple(m for m in models.split(",") if m),
            expires_at=str(context.get("expires_at") or ""),
            spend_limit_micros=int(context.get("spend_limit_micros") or 0),
            limit_reset=str(context.get("limit_reset") or ""),
            fallbacks=tuple(m for m in str(context.get("fallbacks") or "").split(",") if m),
            shards=min(max(int(context.get("shards") or 1), 1), 64),
            max_parallel=int(context.get("max_parallel") or 0),
            account_max_parallel=int(context.get("account_max_parallel") or 0),
        )


def from_request_context_header(value: str | None) -> CallerContext | None:
    """The caller from the adapter's request-context header, or None when absent or not ours."""
    if not value:
        return None
    try:
        authorizer = json.loads(value).get("authorizer") or {}
        return CallerContext.from_authorizer_context(authorizer)
    except (ValueError, KeyError, TypeError, AttributeError):
        return None
