"""Fallback models, OpenRouter's convention: a `models` array in the body (chat completions, responses) is
tried in order after `model`; a key's default fallbacks (`onysoft keys create … --fallbacks M,M`) are used
when the body names none.

- The next model is tried when one fails before its first byte: HTTP 5xx or 429, a timeout, a connection
  error. Any other answer (200, a 4xx) is the answer.
- Every candidate the body names is checked before the hold like `model` itself: in the catalog (404),
  allowed for the key (403), served by its provider on this route (400). A key's default fallback that fails
  those checks is skipped instead (a catalog change, or a route its provider does not serve, must not break
  every request of the key).
- One hold covers the most expensive candidate; the charge is that of the model that answered (its prices go
  into the usage record with the attempts that failed); the answer's `model` is the gateway's name of it.
"""

from onysoft import errors
from onysoft.caller import CallerContext

ROUTES = ("chat.completions", "responses")
MAX_MODELS = 4  # `model` and up to three fallbacks: each failed attempt costs the client latency


def adopt_first(body: dict) -> None:
    """A body with `models` and no `model` asks for models[0] first (OpenRouter)."""
    models = body.get("models")
    if body.get("model") in (None, "") and isinstance(models, list) and models and isinstance(models[0], str):
        body["model"] = models[0]


def candidates(body: dict, caller: CallerContext, endpoint: str) -> list[tuple[str, bool]]:
    """The models to try, in order: `model`, then `models` (or the key's default fallbacks), without repeats;
    each with whether it must pass the checks (True) or is skipped when it does not (a key's default)."""
    models = body.get("models")
    if models is not None and endpoint not in ROUTES:
        raise errors.bad_request("'models' (fallbacks) is offered on /v1/chat/completions and /v1/responses.",
                                 "models", "invalid_value")
    if models is not None and (not isinstance(models, list)
                               or not all(isinstance(m, str) and m for m in models)):
        raise errors.bad_request("'models' must be an array of model names.", "models", "invalid_value")
    extra = models if models is not None else (list(caller.fallbacks) if endpoint in ROUTES else [])
    names = list(dict.fromkeys([body["model"], *extra]))
    if len(names) > MAX_MODELS:
        raise errors.bad_request(f"At most {MAX_MODELS} models may be tried: 'model' and {MAX_MODELS - 1} "
                                 "fallbacks.", "models", "invalid_value")
    required = models is not None
    return [(name, index == 0 or required) for index, name in enumerate(names)]


def worth_another_try(status: int) -> bool:
    """An upstream answer that lets the next model be tried: the provider failed or is rate limiting."""
    return status >= 500 or status == 429
