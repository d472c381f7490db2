"""The views: how an account, a key, a usage record, a model, an FX rate and an audit record are shown.

The only views: the dashboard API, the CLI's `--json` and `GET /v1/key` render these (names as in DESIGN.md's
CLI contract; fields are only ever added). Where the views once disagreed, the honest value won: `stream` is
false for a call that did not stream, `uncharged_micros` is 0 when nothing was left uncharged, an absent time
or owner is null (never "").
"""

import json
from dataclasses import dataclass
from typing import Any

from onysoft import balances, ceilings, money, rate_limits
from onysoft.key_types import key_type_for_account_kind
from onysoft.models import Account, ApiKey, AuditRecord, OwnedAccounts, UsageRecord
from onysoft.usage_rollup import KeyTotals


def _int(value: Any) -> int | None:
    return None if value is None else int(value)


def _str(value: Any) -> str | None:
    return None if value is None else str(value)


_READ = object()  # account_view reads the owner's item itself


def account_view(account: Account, owned: OwnedAccounts | None | object = _READ) -> dict:
    """`owned`: the owner's count of accounts of this kind (ceilings.owned_item), when the caller read it (a
    list reads them all at once); otherwise it is read here (one read, for owned accounts only)."""
    if owned is _READ:
        owned = ceilings.owned_item(account)
    balance = balances.total(account)  # the sum of the account's balance shards
    topped_up = int(account.topped_up_micros or 0)
    return {
        "account_id": account.account_id,
        "kind": account.kind,
        "key_type": key_type_for_account_kind(account.kind).name,
        "name": account.name or "",
        "owner": account.owner or None,
        "currency": account.currency,
        "balance": money.format_micros(balance),
        "balance_micros": balance,
        "topped_up": money.format_micros(topped_up),
        "topped_up_micros": topped_up,
        "markup_pct": money.markup_pct(int(account.markup_bp)),
        "markup_bp": int(account.markup_bp),
        "shards": balances.count_of(account),
        "max_parallel": _int(account.max_parallel),  # requests in flight at once, all its keys; null: no limit
        "created_at": account.created_at,
        **_alert_fields(account),
        # The operator's ceilings (onysoft.ceilings): the most a tenant may give one key, how many keys the
        # account may have and how many accounts of its kind its owner may; `*_used`: the counts now.
        "ceilings": ceilings.view(account, owned),
    }


def _alert_fields(account: Account) -> dict:
    """The Balance Low threshold (null: none) and the alert the account is in now (onysoft.balance_alerts:
    `exhausted`, `low` or null), as fired and not yet re-armed by a top-up: what the dashboard's banner shows."""
    threshold = _int(account.alert_below_micros)
    state = "exhausted" if account.alert_exhausted_at else "low" if account.alert_low_at else None
    return {"alert_below": money.format_micros(threshold) if threshold is not None else None,
            "alert_below_micros": threshold, "balance_alert": state,
            "balance_alert_since": account.alert_exhausted_at or account.alert_low_at or None}


@dataclass(frozen=True)
class KeyState:
    """A key's use of its limits now: this minute's rate-limit window and this spend period's total."""

    usage: rate_limits.Usage
    window: rate_limits.Window
    spent_micros: int
    in_flight: int | None = None  # the key's requests in flight now (None: it has no max_parallel, not counted)


def key_view(record: ApiKey, *, totals: KeyTotals, account: Account | None = None,
             state: KeyState | None = None, previous: ApiKey | None = None,
             secrets: list[ApiKey] | tuple = ()) -> dict:
    """A key as every list shows it: the display form, never the key nor its hash. Its request count and
    spend are the usage rollup's totals (onysoft.usage_rollup: counted off the request path, current within
    the rollup's lag). With its account, the balance it charges; with its state, its effective limits and
    its use of them (`limits`, `usage`). Rotation: when the key last got a new secret, the previous secret's
    display form and until when it works (`grace_until`; on an old secret's own item, read by `GET /v1/key`
    with that secret: status `rotated`, until when it works), and with `previous` (that old secret's item) when
    it was last used. A leaked key: when, and where it was found. `secrets`: every item of the key, when the caller
    read them: its `last_used_at` is then the last use of any of its secrets (old ones write their own item)."""
    spend = totals.spend_micros
    spend_limit = _int(record.spend_limit_micros)
    view = {
        "object": "api_key",
        "key_id": record.key_id,
        "display": record.display,
        "name": record.name or "",
        "type": record.key_type,
        "status": record.status,
        "account_id": record.account_id,
        "currency": record.currency,
        "created_at": record.created_at,
        "last_used_at": max((r.last_used_at for r in (record, *secrets) if r.last_used_at), default=None),
        "expires_at": record.expires_at or None,
        "deleted_at": record.deleted_at or None,
        "request_count": totals.requests,
        "spend": money.format_micros(spend),
        "spend_micros": spend,
        "rpm": _int(record.rpm),  # the key's own limits; null = the key type's default (see `limits`)
        "tpm": _int(record.tpm),
        "max_parallel": _int(record.max_parallel),  # requests in flight at once; null: no limit
        "models": list(record.models) if record.models else None,
        "fallbacks": list(record.fallbacks) if record.fallbacks else None,
        "spend_limit": money.format_micros(spend_limit) if spend_limit is not None else None,
        "spend_limit_micros": spend_limit,
        "limit_reset": record.limit_reset or None,
        "rotated_at": record.rotated_at or None,
        "grace_until": record.grace_until or None,
        "previous_display": record.previous_display or None,
        "previous_last_used_at": (previous.last_used_at or None) if previous is not None else None,
        "leaked_at": record.leaked_at or None,
        "leak_url": record.leak_url or None,
        "leak_source": record.leak_source or None,
    }
    if account is not None:
        balance = balances.total(account)  # the sum of the account's balance shards
        # A partner's markup is its business: its customer's key (GET /v1/key, which the customer reads) shows none.
        markup = None if account.kind == "partner_customer" else money.markup_pct(int(account.markup_bp))
        view.update(currency=account.currency, balance=money.format_micros(balance),
                    balance_micros=balance, markup_pct=markup)
    if state is not None:
        view.update(_limits_and_usage(record, state))
    return view


def _limits_and_usage(record: ApiKey, state: KeyState) -> dict:
    rpm, tpm = rate_limits.effective_limits(record.key_type, record.rpm, record.tpm)
    limit = int(record.spend_limit_micros or 0)
    return {
        "limits": {
            "rpm": rpm, "tpm": tpm, "rpm_is_default": not record.rpm, "tpm_is_default": not record.tpm,
            "max_parallel": _int(record.max_parallel),
            "models": list(record.models or []),
            "fallbacks": list(record.fallbacks or []),
            "spend_limit": money.format_micros(limit) if limit else None,
            "spend_limit_micros": limit or None,
            "limit_reset": (record.limit_reset or None) if limit else None,
            "expires_at": record.expires_at or None,
        },
        "usage": {
            "requests_this_minute": state.usage.requests, "tokens_this_minute": state.usage.tokens,
            "window_resets_in_seconds": round(state.window.reset_seconds, 3),
            "spend_this_period": money.format_micros(state.spent_micros) if limit else None,
            "spend_this_period_micros": state.spent_micros if limit else None,
            "in_flight": state.in_flight,
        },
    }


def usage_view(record: UsageRecord) -> dict:
    charge = int(record.charge_micros or 0)
    return {
        "request_id": record.request_id,
        "key_id": record.key_id,
        "model": record.model,
        "provider": record.provider,
        "upstream_model": record.upstream_model,
        "endpoint": record.endpoint,
        "status": record.status,
        "stream": record.stream == "true",
        "prompt_tokens": int(record.prompt_tokens or 0),
        "completion_tokens": int(record.completion_tokens or 0),
        "currency": record.currency,
        "charge_micros": charge,
        "charge": money.format_micros(charge),
        "hold_micros": int(record.hold_micros or 0),
        "provider_cost_usd": record.provider_cost_usd,
        "input_usd_per_mtok": record.input_usd_per_mtok,
        "output_usd_per_mtok": record.output_usd_per_mtok,
        "markup_pct": money.markup_pct(int(record.markup_bp)) if record.markup_bp is not None else None,
        "fx_rate": record.fx_rate,
        "fx_rate_at": record.fx_rate_at,
        "usage_estimated": record.usage_estimated == "true",  # tokens estimated (cut stream, nonsense usage…)
        "cached_tokens": int(record.cached_tokens or 0),
        "cache_write_tokens": int(record.cache_write_tokens or 0),
        "reasoning_tokens": int(record.reasoning_tokens or 0),
        "cached_input_usd_per_mtok": record.cached_input_usd_per_mtok,
        "cache_write_usd_per_mtok": record.cache_write_usd_per_mtok,
        "overrun": record.overrun == "true",  # the provider reported more than the hold: charged in full
        "overrun_micros": int(record.overrun_micros or 0),
        "uncharged_micros": int(record.uncharged_micros or 0),  # records from before overruns were charged
        "upstream_status": _int(record.upstream_status),
        "sent_at": record.sent_at,
        "error_code": record.error_code,
        "error_message": record.error_message,
        "created_at": record.created_at,
        "settled_at": record.settled_at,
    }


def model_view(price) -> dict:
    """A catalog entry (onysoft.catalog.ModelPrice): prices as decimal strings, USD per million tokens."""
    return {
        "model": price.model,
        "provider": price.provider,
        "upstream_model": price.upstream_model,
        "input_usd_per_mtok": str(price.input_usd_per_mtok),
        "output_usd_per_mtok": str(price.output_usd_per_mtok),
        "enabled": price.enabled,
        "max_output_tokens": price.max_output_tokens,
        "cached_input_usd_per_mtok": _str(price.cached_input_usd_per_mtok),
        "cache_write_usd_per_mtok": _str(price.cache_write_usd_per_mtok),
        "tokens_per_image": price.tokens_per_image,
        "tokens_per_audio": price.tokens_per_audio,
        "tokens_per_document": price.tokens_per_document,
        "audio_input_usd_per_mtok": _str(price.audio_input_usd_per_mtok),
        "tier_above_tokens": price.tier_above_tokens,
        "tier_input_usd_per_mtok": _str(price.tier_input_usd_per_mtok),
        "tier_output_usd_per_mtok": _str(price.tier_output_usd_per_mtok),
        "updated_at": price.created_at or None,
    }


def fx_view(pair: str, found: tuple | None) -> dict:
    """An exchange rate (rate, updated_at, its age and whether it is still used: onysoft.fx_age) or its absence."""
    from onysoft import fx_age

    if not found:
        return {"pair": pair, "rate": None, "updated_at": None, "age_hours": None, "state": "missing"}
    age = fx_age.age_hours(found[1]) if found[1] else None
    return {"pair": pair, "rate": str(found[0]), "updated_at": found[1] or None,
            "age_hours": round(age, 2) if age is not None else None, "state": fx_age.state(found[1] or "")}


def audit_view(item: AuditRecord, *, reader_is_operator: bool = True) -> dict:
    """One audit record. A tenant reading it sees `operator` for whatever the operator or the CLI did (the CLI's
    actor names a host and a local user: the platform's, not the tenant's), and no one's sign-in id but its own
    principal's."""
    actor, actor_sub = item.actor, item.actor_sub
    if not reader_is_operator and (actor == "operator" or actor.startswith("cli:")):
        actor, actor_sub = "operator", None
    return {
        "audit_id": item.audit_id, "at": item.at, "actor": actor, "actor_sub": actor_sub,
        "action": item.action, "account_id": item.target_account_id, "key_id": item.target_key_id,
        "details": json.loads(item.details) if item.details else {}, "request_id": item.request_id,
    }



def _money_pair(name: str, micros: int | None) -> dict:
    """`<name>_micros` (an exact integer) and `<name>` (its decimal string) side by side; both null when hidden."""
    return {f"{name}_micros": micros, name: None if micros is None else money.format_micros(micros)}


def margin_figures_view(figures, *, show_cost: bool, currency: str | None = None) -> dict:
    """One margin row's (or the totals') figures (onysoft.margin.Figures). Without `show_cost` (a partner), what
    the providers billed and the platform's margin are null: they are the platform's, not the partner's.
    `currency`: the row's, for `charged` (the totals keep currencies apart instead)."""
    view = {"requests": figures.requests, "settled": figures.settled, "failed": figures.failed,
            "pending": figures.pending}
    if currency is not None:
        view["currency"] = currency
        view.update(_money_pair("charged", figures.charged_micros))
    view.update(_money_pair("charged_usd", figures.charged_usd_micros))
    view.update(_money_pair("provider_cost_usd", figures.provider_cost_usd_micros if show_cost else None))
    view.update(_money_pair("margin_usd", figures.margin_usd_micros if show_cost else None))
    view["margin_pct"] = money.percent(figures.margin_usd_micros, figures.charged_usd_micros) if show_cost else None
    view["uncosted_requests"] = figures.uncosted
    return view
