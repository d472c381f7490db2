"""The catalog: models with their USD prices per million tokens, and FX rates."""

from dataclasses import dataclass
from decimal import Decimal, InvalidOperation

from onysoft import clock
from onysoft.models import CatalogEntry

MODEL = "model"
FX = "fx"


class CatalogError(ValueError):
    pass


@dataclass(frozen=True)
class ModelPrice:
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
    tokens_per_image: int | None = None  # the prompt bound of one image, audio or file part

    @property
    def cached_input_price(self) -> Decimal:
        return self.input_usd_per_mtok if self.cached_input_usd_per_mtok is None else self.cached_input_usd_per_mtok

    @property
    def cache_write_price(self) -> Decimal:
        return self.input_usd_per_mtok if self.cache_write_usd_per_mtok is None else self.cache_write_usd_per_mtok


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


def set_model(model: str, *, input_usd_per_mtok: str, output_usd_per_mtok: str,
              provider: str | None = None, upstream_model: str | None = None, enabled: bool = True,
              max_output_tokens: int | None = None, cached_input_usd_per_mtok: str | None = None,
              cache_write_usd_per_mtok: str | None = None, tokens_per_image: int | None = None) -> ModelPrice:
    for what, count in (("max output tokens", max_output_tokens), ("tokens per image", tokens_per_image)):
        if count is not None and (isinstance(count, bool) or not isinstance(count, int) or count < 1):
            raise CatalogError(f"{what} must be a positive whole number, got {count!r}")
    default_provider, default_upstream = split_model_name(model)
    entry = CatalogEntry(
        kind=MODEL, id=model, provider=provider or default_provider,
        upstream_model=upstream_model or default_upstream,
        input_usd_per_mtok=str(_decimal(input_usd_per_mtok, "input price")),
        output_usd_per_mtok=str(_decimal(output_usd_per_mtok, "output price")),
        enabled="true" if enabled else "false", updated_at=clock.now_iso(),
        max_output_tokens=max_output_tokens, tokens_per_image=tokens_per_image,
        cached_input_usd_per_mtok=None if cached_input_usd_per_mtok is None
        else str(_decimal(cached_input_usd_per_mtok, "cached input price")),
        cache_write_usd_per_mtok=None if cache_write_usd_per_mtok is None
        else str(_decimal(cache_write_usd_per_mtok, "cache write price")),
    )
    entry.save()
    return _to_price(entry)


def _to_price(entry: CatalogEntry) -> ModelPrice:
    return ModelPrice(
        model=entry.id, provider=entry.provider, upstream_model=entry.upstream_model,
        input_usd_per_mtok=Decimal(entry.input_usd_per_mtok), output_usd_per_mtok=Decimal(entry.output_usd_per_mtok),
        enabled=entry.enabled == "true", created_at=entry.updated_at or "",
        max_output_tokens=int(entry.max_output_tokens) if entry.max_output_tokens else None,
        cached_input_usd_per_mtok=_optional_decimal(entry.cached_input_usd_per_mtok),
        cache_write_usd_per_mtok=_optional_decimal(entry.cache_write_usd_per_mtok),
        tokens_per_image=int(entry.tokens_per_image) if entry.tokens_per_image else None,
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

    def _refresh_if_stale(self) -> None:
        import time

        now = time.monotonic()
        if now - self._loaded_at < self.ttl_seconds:
            return
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

    def invalidate(self) -> None:
        self._loaded_at = float("-inf")


# This instance's cache, shared by pricing (onysoft.forwarding) and GET /v1/models (onysoft.proxy_app).
catalog_cache = CatalogCache()
