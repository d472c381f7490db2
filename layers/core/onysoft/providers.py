"""Upstream providers: where each one is and where its key comes from (providers.json is the data).

Locally ONYSOFT_PROVIDER_<NAME>_BASE_URL / _API_KEY override; in AWS the key is a Secrets Manager secret
read through Powertools Parameters (cached for SECRET_MAX_AGE seconds). The client's sk-ony key is never
sent upstream: the upstream request is built from scratch with the provider's key.
"""

import json
import os
import time
from dataclasses import dataclass
from functools import cache
from pathlib import Path

SECRET_MAX_AGE = 300
# A secret's key as last read and when (monotonic), in memory only, as Powertools' own cache would keep it: kept
# here so that key_at_hand can say whether api_key will answer without a network call.
_keys: dict[str, tuple[str, float]] = {}
MOCK = "mock"
EVERY_PROVIDER_APIS = ("chat.completions", "embeddings")  # OpenAI-compatible: what every provider serves


@dataclass(frozen=True)
class Provider:
    name: str
    base_url: str
    secret: str
    output_limit_field: str
    apis: tuple[str, ...] = EVERY_PROVIDER_APIS
    keyless: bool = False

    def serves(self, endpoint: str) -> bool:
        return endpoint in self.apis


class ProviderUnavailable(Exception):
    """The provider is unknown or has no key configured."""


@dataclass(frozen=True)
class RoutePolicy:
    """What a route forwards to one provider (providers.json `_routes`; onysoft.request_policy applies it)."""

    fields: frozenset[str]
    parts: dict[str, str | None]  # content part type → the catalog bound it needs (image | audio | document), or None
    items: frozenset[str]  # input item types (the Responses API)
    tools: tuple[str, ...]  # tool types; an entry ending in '_' is a prefix (versioned tools)
    tool_tokens: dict[str, int]  # prompt tokens the provider adds per tool type ('*': once when any tool is sent)


@cache
def _data() -> dict:
    return json.loads((Path(__file__).with_name("providers.json")).read_text())


def _registry() -> dict[str, dict]:
    return {name: entry for name, entry in _data().items() if not name.startswith("_")}


@cache
def route_policy(provider: str, endpoint: str) -> RoutePolicy:
    """The provider's own `routes` entry for the endpoint, else the route's default."""
    base = _data()["_routes"][endpoint]
    entry = {**base, **((_registry().get(provider) or {}).get("routes") or {}).get(endpoint, {})}
    return RoutePolicy(frozenset(entry["fields"]), dict(entry.get("parts") or {}), frozenset(entry.get("items") or ()),
                       tuple(entry.get("tools") or ()), dict(entry.get("tool_tokens") or {}))


def _env(name: str, suffix: str) -> str | None:
    return os.environ.get(f"ONYSOFT_PROVIDER_{name.upper()}_{suffix}") or None


def get_provider(name: str) -> Provider:
    entry = _registry().get(name)
    if entry is None:
        raise ProviderUnavailable(f"unknown provider {name!r}")
    base_url = _env(name, "BASE_URL") or entry["base_url"]
    return Provider(name, base_url.rstrip("/"), entry.get("secret", ""), entry.get("output_limit_field", "max_tokens"),
                    EVERY_PROVIDER_APIS + tuple(entry.get("apis", ())), bool(entry.get("keyless")))


def api_key(provider: Provider) -> str:
    if provider.keyless:
        return ""
    local = _env(provider.name, "API_KEY")
    if local:
        return local
    if not provider.secret or os.environ.get("AWS_LAMBDA_FUNCTION_NAME") is None:
        raise ProviderUnavailable(f"no API key configured for provider {provider.name!r}")
    held = _keys.get(provider.secret)
    if held is not None and time.monotonic() - held[1] < SECRET_MAX_AGE:
        return held[0]
    from aws_lambda_powertools.utilities import parameters  # only in AWS, only when needed

    read_at = time.monotonic()
    try:
        key = str(parameters.get_secret(provider.secret, force_fetch=True))
    except Exception as exc:  # noqa: BLE001 - any failure to read the secret means: not configured
        raise ProviderUnavailable(f"could not read the key of provider {provider.name!r}") from exc
    _keys[provider.secret] = (key, read_at)
    return key


def key_at_hand(provider: Provider, within_seconds: float = 5.0) -> bool:
    """Whether api_key(provider) answers without a network call for `within_seconds` more: keyless, a local key,
    or a secret read less than SECRET_MAX_AGE ago."""
    if provider.keyless or _env(provider.name, "API_KEY"):
        return True
    held = _keys.get(provider.secret)
    return held is not None and time.monotonic() - held[1] < SECRET_MAX_AGE - within_seconds
