"""Catalog and FX operations: the platform's (operator only)."""

from onysoft import catalog
from onysoft.audit import Actor
from onysoft.errors import bad_request
from onysoft.operations import access
from onysoft.operations.views import fx_view, model_view

_ONLY_OPERATOR = "Only the platform manages the catalog and exchange rates."


def set_model(actor: Actor, model: str, *, input_usd_per_mtok: str, output_usd_per_mtok: str,
              provider: str | None = None, upstream_model: str | None = None, enabled: bool = True,
              **options) -> dict:
    """`options`: onysoft.catalog.set_model's bounds and optional prices (catalog.COUNTS, catalog.OPTIONAL_PRICES)."""
    access.require_operator(actor, _ONLY_OPERATOR)
    try:
        price = catalog.set_model(
            model, input_usd_per_mtok=input_usd_per_mtok, output_usd_per_mtok=output_usd_per_mtok,
            provider=provider, upstream_model=upstream_model, enabled=enabled, **options)
    except catalog.CatalogError as exc:
        raise bad_request(str(exc), "model") from None
    return model_view(price)


def list_models(actor: Actor) -> dict:
    """Every model of the catalog, disabled ones too, by name."""
    access.require_operator(actor, _ONLY_OPERATOR)
    return {"models": sorted((model_view(p) for p in catalog.list_models(enabled_only=False)),
                             key=lambda v: v["model"])}


def unknown_models(actor: Actor, models: list[str]) -> list[str]:
    """Those of `models` the catalog does not hold (yet)."""
    access.require_operator(actor, _ONLY_OPERATOR)
    return [model for model in models if catalog.get_model(model) is None]


def set_fx(actor: Actor, pair: str, rate: str) -> dict:
    access.require_operator(actor, _ONLY_OPERATOR)
    try:
        found = catalog.set_fx(pair, rate)
    except catalog.CatalogError as exc:
        raise bad_request(str(exc), "rate") from None
    return fx_view(pair.upper(), found)


def get_fx(actor: Actor, pair: str = "USDTRY") -> dict:
    access.require_operator(actor, _ONLY_OPERATOR)
    return fx_view(pair.upper(), catalog.get_fx(pair.upper()))
