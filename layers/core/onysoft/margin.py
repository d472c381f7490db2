"""Margin: what was charged, what the providers billed, and the difference, from the usage rollups.

Read from the accounts' daily totals (onysoft.usage_rollup: one item per account, UTC day, currency and model),
never from the usage records: one Query per account over the days asked, days x models items. Each settled
record's figures were fixed once, as integers, when the rollup counted it (onysoft.money's margin rules: its
charge in USD at the rate pinned on it, rounded down; the provider's cost in USD, rounded up), so every figure
here is exactly the sum of its records' figures, whatever the grouping, and the rows add up to the totals.

Rows are per group and currency: a partner, a model or a day with accounts in TRY and in USD has one row for
each, so `charged_micros` is always in one currency; the USD figures add up across them.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field, fields

from onysoft import usage_rollup
from onysoft.models import Account
from onysoft.principals import OWNED_KINDS, PARTNER

GROUPS = ("partner", "account", "model", "day")
PARTNER_KINDS = OWNED_KINDS[PARTNER]


@dataclass
class Figures:
    """One row's sums (all integers; money in micro-units)."""

    requests: int = 0
    pending: int = 0
    settled: int = 0
    failed: int = 0
    charged_micros: int = 0  # in the row's currency
    charged_usd_micros: int = 0
    provider_cost_usd_micros: int = 0
    costed: int = 0  # settled requests whose USD figures are counted (see usage_rollup)
    overrun_micros: int = 0

    def add_item(self, item) -> None:
        self.requests += int(item.requests or 0)
        self.pending += int(item.pending or 0)
        self.settled += int(item.settled or 0)
        self.failed += int(item.failed or 0)
        self.charged_micros += int(item.charge_micros or 0)
        self.charged_usd_micros += int(item.charge_usd_micros or 0)
        self.provider_cost_usd_micros += int(item.provider_cost_usd_micros or 0)
        self.costed += int(item.costed or 0)
        self.overrun_micros += int(item.overrun_micros or 0)

    def add(self, other: Figures, *, with_charged: bool = True) -> None:
        for name in (f.name for f in fields(self)):
            if name != "charged_micros" or with_charged:
                setattr(self, name, getattr(self, name) + getattr(other, name))

    @property
    def margin_usd_micros(self) -> int:
        return self.charged_usd_micros - self.provider_cost_usd_micros

    @property
    def uncosted(self) -> int:
        """Settled requests counted before the rollup kept USD figures (issue 26): their money is in
        charged_micros but not in the USD figures."""
        return self.settled - self.costed


@dataclass
class Report:
    by: str
    first_day: str
    last_day: str
    rows: dict[tuple[str | None, str], Figures] = field(default_factory=dict)  # (group, currency) -> figures
    accounts: dict[str, Account] = field(default_factory=dict)  # the accounts of `account` rows
    total: Figures = field(default_factory=Figures)  # charged_micros stays 0: currencies are kept apart
    charged_by_currency: dict[str, int] = field(default_factory=dict)
    items_read: int = 0


def partner_of(account: Account) -> str | None:
    """The partner an account's revenue goes through: the owner of a partner's project or customer; None for
    the platform's own customers (users, org projects)."""
    return account.owner if account.kind in PARTNER_KINDS and account.owner else None


def _group_of(by: str, account: Account, item) -> str | None:
    if by == "account":
        return account.account_id
    if by == "partner":
        return partner_of(account)
    if by == "model":
        return item.model or ""
    return item.day or item.sk[:10]


def report(accounts: Iterable[Account], first_day: str, last_day: str, by: str) -> Report:
    """The margin of `accounts` over the UTC days first_day..last_day (inclusive), grouped `by`."""
    if by not in GROUPS:
        raise ValueError(f"by must be one of: {', '.join(GROUPS)}")
    result = Report(by, first_day, last_day)
    for account in accounts:
        items = usage_rollup.read_days(f"acct#{account.account_id}", first_day, last_day)
        result.items_read += len(items)
        for item in items:
            figures = Figures()
            figures.add_item(item)
            if figures == Figures():  # counts nothing now: a fallback's hold moved to the model that answered
                continue
            currency = item.currency or account.currency
            key = (_group_of(by, account, item), currency)
            if key not in result.rows:
                result.rows[key] = Figures()
                if by == "account":
                    result.accounts[account.account_id] = account
            result.rows[key].add(figures)
            result.total.add(figures, with_charged=False)
            result.charged_by_currency[currency] = result.charged_by_currency.get(currency, 0) + figures.charged_micros
    return result
