"""Statements as their actor may read them: any account it sees (onysoft.statements does the books).

The document (`--json`, the dashboard) has the four balances as `*_micros` integers beside their decimal strings,
and `lines`: the opening balance, each top-up (+), the charges of each model (−) and the closing balance, whose
signed amounts add up: opening + top-ups − charges = closing. `charges_by_key` is the same charges by key, and
`debts_micros` the part of them that overruns added beyond their holds. Who made a top-up is its principal for
everyone; the person (email or CLI user) only for the operator.
"""

import csv
import io

from onysoft import clock, money, statements
from onysoft.audit import Actor
from onysoft.errors import bad_request
from onysoft.operations import access

CSV_COLUMNS = ("type", "date", "description", "model", "key_id", "requests", "amount", "amount_micros", "currency",
               "idempotency_key", "made_by", "made_by_person")


def _pair(name: str, micros: int) -> dict:
    return {f"{name}_micros": micros, name: money.format_micros(micros)}


def _line(kind: str, date: str | None, description: str, micros: int, **extra) -> dict:
    return {"type": kind, "date": date, "description": description, **_pair("amount", micros), **extra}


def render(statement: statements.Statement) -> dict:
    """The whole statement, as issued (onysoft.statements saves this for a closed month)."""
    account = statement.account
    start, end = statements.month_bounds(statement.month)
    first, after = clock.to_iso(start), clock.to_iso(end)
    lines = [_line("opening_balance", first, "Opening balance", statement.opening_micros)]
    for topup in statement.topups:
        lines.append(_line("topup", topup.at, "Top-up", int(topup.amount_micros), topup_id=topup.topup_id,
                           idempotency_key=topup.idempotency_key, made_by=topup.actor,
                           made_by_person=topup.actor_email or topup.actor_sub))
    for charges in statement.by_model:
        if not charges.charge_micros and not charges.requests:
            continue
        lines.append(_line("charges", None, f"Charges: {charges.model or '(unknown model)'}", -charges.charge_micros,
                           model=charges.model, requests=charges.requests, settled=charges.settled,
                           failed=charges.failed, pending=charges.pending, **_pair("debt", charges.overrun_micros)))
    lines.append(_line("closing_balance", after, "Closing balance", statement.closing_micros))
    return {
        "account_id": account.account_id, "name": account.name or "", "kind": account.kind, "owner": account.owner,
        "currency": account.currency, "month": statement.month, "from": first, "to": after,
        "status": statement.status, "generated_at": clock.now_iso(),
        **_pair("opening_balance", statement.opening_micros), **_pair("topups", statement.topups_micros),
        **_pair("charges", statement.charges_micros), **_pair("closing_balance", statement.closing_micros),
        **_pair("debts", statement.debts_micros),
        "requests": sum(m.requests for m in statement.by_model),
        "failed_requests": sum(m.failed for m in statement.by_model),
        "pending_requests": statement.pending,
        "opening_from": statement.opening_from,
        **_pair("pre_ledger_topups", statement.pre_ledger_topups_micros),
        "lines": lines,
        "charges_by_key": [{"key_id": k.key_id, "name": k.name, "display": k.display, "requests": k.requests,
                            **_pair("charge", k.charge_micros)} for k in statement.by_key],
    }


def _for(actor: Actor, document: dict) -> dict:
    """The person behind a top-up is the platform's to know."""
    if actor.principal.is_operator:
        return document
    return {**document, "lines": [{**line, "made_by_person": None} if line["type"] == "topup" else line
                                  for line in document["lines"]]}


def statement(actor: Actor, account_id: str, month: str) -> dict:
    account = access.account(actor, account_id)
    try:
        statements.month_bounds(month)
    except statements.MonthError as exc:
        raise bad_request(str(exc), "month") from None
    created = account.created_at[:7]
    current = clock.utc_now().strftime("%Y-%m")
    if not created <= month <= current:
        raise bad_request(f"statements of {account.account_id} run from {created} to {current}", "month")
    return _for(actor, statements.issue(account, month, render))


def to_csv(document: dict) -> str:
    """The statement's lines, then its charges by key (type `key_charges`: the same charges, by key)."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(CSV_COLUMNS)
    currency = document["currency"]
    for line in document["lines"]:
        writer.writerow([_cell(line.get(c, currency if c == "currency" else None)) for c in CSV_COLUMNS])
    for key in document["charges_by_key"]:
        row = {"type": "key_charges", "description": f"Charges: key {key['display']} {key['name']}".rstrip(),
               "key_id": key["key_id"], "requests": key["requests"],
               "amount": money.format_micros(-key["charge_micros"]), "amount_micros": -key["charge_micros"],
               "currency": currency}
        writer.writerow([_cell(row.get(c)) for c in CSV_COLUMNS])
    return out.getvalue()


def _cell(value) -> str:
    text = "" if value is None else str(value)
    # A leading = + @ (or a - that is not a number) would make a spreadsheet run the cell as a formula.
    if text[:1] in ("=", "+", "@") or (text[:1] == "-" and not _is_number(text)):
        return "'" + text
    return text


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True
