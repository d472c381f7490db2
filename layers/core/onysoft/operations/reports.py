"""Reports: the margin by partner, account, model or day (onysoft.margin), as its actor may see it.

The operator sees every account, with what the providers billed and the platform's margin. A partner sees its
own accounts (its customers and its own projects): requests and what each was charged (its revenue; what the
platform charged it, for its own projects), never the providers' cost nor the platform's margin (those rows
carry null). Users and org admins have no margin report (403).
"""

from datetime import date, timedelta

from onysoft import margin, money
from onysoft.audit import Actor
from onysoft.errors import bad_request
from onysoft.operations import access
from onysoft.operations.views import margin_figures_view
from onysoft.principals import OPERATOR, PARTNER

MAX_DAYS = 366
GROUP_FIELD = {"account": "account_id", "partner": "partner", "model": "model", "day": "day"}  # what a row names


def _day(text: str | None, param: str) -> date:
    try:
        return date.fromisoformat(text or "")
    except ValueError:
        raise bad_request(f"`{param}` must be a date, YYYY-MM-DD (a whole UTC day)", param) from None


def day_range(start: str | None, end: str | None) -> tuple[str, str]:
    """Whole UTC days, both included."""
    first, last = _day(start, "from"), _day(end, "to")
    if first > last:
        raise bad_request("`from` must not be after `to`", "from")
    if last - first >= timedelta(days=MAX_DAYS):
        raise bad_request(f"a report spans at most {MAX_DAYS} days", "from")
    return first.isoformat(), last.isoformat()


def margin_report(actor: Actor, *, start: str | None, end: str | None, by: str = "account") -> dict:
    """`{"rows": [...], "totals": {...}}` over the whole UTC days start..end (both included)."""
    principal = actor.principal
    if principal.kind not in (OPERATOR, PARTNER):
        raise access.forbidden("The margin report is the platform's and its partners'.")
    if by not in margin.GROUPS:
        raise bad_request(f"`by` must be one of: {', '.join(margin.GROUPS)}", "by")
    first_day, last_day = day_range(start, end)
    accounts = sorted(principal.accounts(), key=lambda a: a.account_id)
    found = margin.report(accounts, first_day, last_day, by)
    show_cost = principal.is_operator
    rows = []
    for (group, currency), figures in found.rows.items():
        row = {GROUP_FIELD[by]: group}
        if by == "account":
            account = found.accounts[group]
            row.update(name=account.name or "", kind=account.kind, partner=margin.partner_of(account))
        rows.append({**row, **margin_figures_view(figures, show_cost=show_cost, currency=currency)})
    if by == "day":
        rows.sort(key=lambda r: (r["day"], r["currency"]))
    else:  # the biggest first; ties in a stable order
        rows.sort(key=lambda r: (-r["charged_usd_micros"], str(r[GROUP_FIELD[by]] or ""), r["currency"]))
    totals = margin_figures_view(found.total, show_cost=show_cost)
    totals["charged_by_currency"] = [{"currency": currency, "charged_micros": micros,
                                      "charged": money.format_micros(micros)}
                                     for currency, micros in sorted(found.charged_by_currency.items())]
    return {
        "by": by, "from": first_day, "to": last_day, "scope": "platform" if show_cost else str(principal),
        "accounts": len(accounts), "items_read": found.items_read, "rows": rows, "totals": totals,
    }
