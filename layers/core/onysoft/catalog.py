"""The catalog: models with their USD prices per million tokens, and FX rates."""

import threading
import time
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation

from onysoft import clock, money
from onysoft.models import CatalogEntry
from onysoft.provider_usage import Usage

MODEL = "model"
FX = "fx"


class CatalogError(ValueError):
    pass


@dataclass(frozen=True)
class ModelPrice:
    """A model's prices (USD per million tokens) and the bounds a hold is sized on (docs/BILLING.md)."""

    model: str
    provider: str
    upstream_model: str
    input_usd_per_mtok: Decimal
    output_usd_per_mtok: Decimal
    enabled: bool
    created_at: str
    max_output_tokens: int | None = None  # the most output a hold covers and the gateway sends upstream
    cached_input_usd_per_mtok: Decimal | None = None  # None: cached input is priced as input
    cache_write_usd_per_mtok: Decimal | None = None  # None: cache writes are priced as input
    # The prompt tokens one media part may cost, by kind; a kind without a bound is refused (hold_sizing).
    tokens_per_image: int | None = None
    tokens_per_audio: int | None = None
    tokens_per_document: int | None = None
    audio_input_usd_per_mtok: Decimal | None = None  # audio input tokens; None: audio input is refused
    # Long-context tier: a request whose prompt is above `tier_above_tokens` is priced wholly at the tier's prices
    # (Gemini 2.5 Pro above 200k, Claude's 1M context); its cached reads and cache writes at the tier's input price.
    tier_above_tokens: int | None = None
    tier_input_usd_per_mtok: Decimal | None = None
    tier_output_usd_per_mtok: Decimal | None = None

    @property
    def cached_input_price(self) -> Decimal:
        return self.input_usd_per_mtok if self.cached_input_usd_per_mtok is None else self.cached_input_usd_per_mtok

    @property
    def cache_write_price(self) -> Decimal:
        return self.input_usd_per_mtok if self.cache_write_usd_per_mtok is None else self.cache_write_usd_per_mtok

    def media_bound(self, kind: str) -> int | None:
        """The catalog's bound for one media part of `kind` (image | audio | document); None: not accepted."""
        if kind == "audio" and self.audio_input_usd_per_mtok is None:
            return None  # audio tokens the catalog cannot price are never sent
        return {"image": self.tokens_per_image, "audio": self.tokens_per_audio,
                "document": self.tokens_per_document}.get(kind)

    def in_tier(self, prompt_tokens: int) -> bool:
        return self.tier_above_tokens is not None and prompt_tokens > self.tier_above_tokens

    def cost_usd(self, usage: Usage) -> Decimal:
        """What the provider bills for `usage` at these prices: uncached text input, cached reads, cache writes
        and audio input (all within prompt_tokens), and output (reasoning included). Exact, in USD."""
        text_in, output = self.input_usd_per_mtok, self.output_usd_per_mtok
        cached, writes = self.cached_input_price, self.cache_write_price
        if self.in_tier(usage.prompt_tokens):
            text_in = self.tier_input_usd_per_mtok if self.tier_input_usd_per_mtok is not None else text_in
            output = self.tier_output_usd_per_mtok if self.tier_output_usd_per_mtok is not None else output
            cached = writes = text_in
        audio = self.audio_input_usd_per_mtok if self.audio_input_usd_per_mtok is not None else text_in
        uncached = usage.prompt_tokens - usage.cached_tokens - usage.cache_write_tokens - usage.audio_tokens
        return (money.usd_cost(uncached, text_in) + money.usd_cost(usage.cached_tokens, cached)
                + money.usd_cost(usage.cache_write_tokens, writes) + money.usd_cost(usage.audio_tokens, audio)
                + money.usd_cost(usage.completion_tokens, output))


def _decimal(text: str, what: str) -> Decimal:
    try:
        value = Decimal(str(text))
    except InvalidOperation:
        raise CatalogError(f"{what} must be a decimal number, got {text!r}") from None
    if not value.is_finite() or value < 0:
        raise CatalogError(f"{what} must be zero or more, got {text!r}")
    return value


def split_model_name(model: str) -> tuple[str, str]:
    provider, sep, upstream = model.partition("/")
    if not sep or not provider or not upstream:
        raise CatalogError(f"model names are provider/model, like openai/gpt-4o-mini; got {model!r}")
    return provider, upstream


COUNTS = ("max_output_tokens", "tokens_per_image", "tokens_per_audio", "tokens_per_document", "tier_above_tokens")
OPTIONAL_PRICES = ("cached_input_usd_per_mtok", "cache_write_usd_per_mtok", "audio_input_usd_per_mtok",
                   "tier_input_usd_per_mtok", "tier_output_usd_per_mtok")


def set_model(model: str, *, input_usd_per_mtok: str, output_usd_per_mtok: str,
              provider: str | None = None, upstream_model: str | None = None, enabled: bool = True,
              **options) -> ModelPrice:
    """Add or replace a model. `options`: the COUNTS (positive whole numbers) and OPTIONAL_PRICES (decimal
    strings) of ModelPrice; absent ones are unset."""
    unknown = set(options) - set(COUNTS) - set(OPTIONAL_PRICES)
    if unknown:
        raise TypeError(f"unknown catalog options: {sorted(unknown)}")
    for name in COUNTS:
        count = options.get(name)
        if count is not None and (isinstance(count, bool) or not isinstance(count, int) or count < 1):
            raise CatalogError(f"{name.replace('_', ' ')} must be a positive whole number, got {count!r}")
    tier = [options.get(name) for name in ("tier_above_tokens", "tier_input_usd_per_mtok", "tier_output_usd_per_mtok")]
    if any(v is not None for v in tier) and any(v is None for v in tier):
        raise CatalogError("a long-context tier needs all three: tier above tokens, tier input and output prices")
    if (options.get("audio_input_usd_per_mtok") is None) != (options.get("tokens_per_audio") is None):
        raise CatalogError("audio input needs both its price and its bound per part (tokens per audio)")
    default_provider, default_upstream = split_model_name(model)
    prices = {name: None if options.get(name) is None else str(_decimal(options[name], name.replace("_", " ")))
              for name in OPTIONAL_PRICES}
    entry = CatalogEntry(
        kind=MODEL, id=model, provider=provider or default_provider,
        upstream_model=upstream_model or default_upstream,
        input_usd_per_mtok=str(_decimal(input_usd_per_mtok, "input price")),
        output_usd_per_mtok=str(_decimal(output_usd_per_mtok, "output price")),
        enabled="true" if enabled else "false", updated_at=clock.now_iso(),
        **{name: options.get(name) for name in COUNTS}, **prices,
    )
    entry.save()
    return _to_price(entry)


def _to_price(entry: CatalogEntry) -> ModelPrice:
    return ModelPrice(
        model=entry.id, provider=entry.provider, upstream_model=entry.upstream_model,
        input_usd_per_mtok=Decimal(entry.input_usd_per_mtok), output_usd_per_mtok=Decimal(entry.output_usd_per_mtok),
        enabled=entry.enabled == "true", created_at=entry.updated_at or "",
        **{name: int(getattr(entry, name)) if getattr(entry, name) else None for name in COUNTS},
        **{name: _optional_decimal(getattr(entry, name)) for name in OPTIONAL_PRICES},
    )


def _optional_decimal(text: str | None) -> Decimal | None:
    return Decimal(text) if text else None


def list_models(*, enabled_only: bool = True) -> list[ModelPrice]:
    prices = [_to_price(e) for e in CatalogEntry.query(MODEL)]
    return [p for p in prices if p.enabled or not enabled_only]


def get_model(model: str) -> ModelPrice | None:
    try:
        return _to_price(CatalogEntry.get(MODEL, model))
    except CatalogEntry.DoesNotExist:
        return None


def set_fx(pair: str, rate: str) -> tuple[Decimal, str]:
    pair = pair.upper()
    if pair != "USDTRY":
        raise CatalogError(f"only USDTRY is used by the gateway; got {pair!r}")
    value = _decimal(rate, "rate")
    if value == 0:
        raise CatalogError("rate must be greater than zero")
    entry = CatalogEntry(kind=FX, id=pair, rate=str(value), updated_at=clock.now_iso())
    entry.save()
    return value, entry.updated_at


def get_fx(pair: str = "USDTRY") -> tuple[Decimal, str] | None:
    try:
        entry = CatalogEntry.get(FX, pair)
    except CatalogEntry.DoesNotExist:
        return None
    return Decimal(entry.rate), entry.updated_at or ""


class CatalogCache:
    """The catalog as one Lambda instance sees it: one Scan, kept for `ttl_seconds`.

    Prices and the FX rate are read before every hold; caching them keeps the hold the only
    DynamoDB round trip before the upstream call. A price change reaches requests within the TTL.
    """

    def __init__(self, ttl_seconds: float = 60.0):
        self.ttl_seconds = ttl_seconds
        self._loaded_at = float("-inf")
        self._models: dict[str, ModelPrice] = {}
        self._fx: dict[str, tuple[Decimal, str]] = {}
        # Many requests at once in one process (managed instances) find it stale together: one Scan, not one each.
        self._refreshing = threading.Lock()

    def _refresh_if_stale(self) -> None:
        if time.monotonic() - self._loaded_at < self.ttl_seconds:
            return
        with self._refreshing:
            now = time.monotonic()
            if now - self._loaded_at < self.ttl_seconds:
                return  # another thread loaded it while this one waited
            self._load(now)

    def _load(self, now: float) -> None:
        models: dict[str, ModelPrice] = {}
        fx: dict[str, tuple[Decimal, str]] = {}
        for entry in CatalogEntry.scan():
            if entry.kind == MODEL:
                models[entry.id] = _to_price(entry)
            elif entry.kind == FX:
                fx[entry.id] = (Decimal(entry.rate), entry.updated_at or "")
        self._models, self._fx, self._loaded_at = models, fx, now

    def model(self, name: str) -> ModelPrice | None:
        self._refresh_if_stale()
        price = self._models.get(name)
        return price if price and price.enabled else None

    def enabled_models(self) -> list[ModelPrice]:
        """GET /v1/models from the same cache: listing models costs no DynamoDB call within the TTL."""
        self._refresh_if_stale()
        return [price for price in self._models.values() if price.enabled]

    def fx(self, pair: str = "USDTRY") -> tuple[Decimal, str] | None:
        self._refresh_if_stale()
        return self._fx.get(pair)

    def fresh(self, within_seconds: float = 5.0) -> bool:
        """Whether reading the cache needs no Scan for `within_seconds` more."""
        return time.monotonic() - self._loaded_at < self.ttl_seconds - within_seconds

    def invalidate(self) -> None:
        self._loaded_at = float("-inf")


# This instance's cache, shared by pricing (onysoft.forwarding) and GET /v1/models (onysoft.proxy_app).
catalog_cache = CatalogCache()
