"""Fixtures for tests that drive the proxy app in-process (moto mock_aws: single-threaded checks only)."""

import json
from decimal import Decimal

import pytest
from starlette.testclient import TestClient

from onysoft import catalog, money
from onysoft.accounts import create_account, top_up
from onysoft.api_keys import create_key
from onysoft.caller import REQUEST_CONTEXT_HEADER

FX = Decimal("41.5")
PRICES = (Decimal("1.25"), Decimal("2.5"))  # USD per million tokens, input / output


@pytest.fixture
def gateway(aws_tables):
    from onysoft import circuit_breaker, proxy_app

    circuit_breaker.reset()  # a new process: no provider's breaker open from an earlier test's timeouts
    catalog.catalog_cache.invalidate()
    catalog.set_model("mock/echo", input_usd_per_mtok=str(PRICES[0]), output_usd_per_mtok=str(PRICES[1]))
    catalog.set_model("mock/error-500", input_usd_per_mtok="1", output_usd_per_mtok="1")
    catalog.set_model("mock/timeout", input_usd_per_mtok="1", output_usd_per_mtok="1")
    catalog.set_model("mock/cut-stream", input_usd_per_mtok="1", output_usd_per_mtok="1")
    catalog.set_model("mock/embed", input_usd_per_mtok="0.02", output_usd_per_mtok="0")
    catalog.set_fx("USDTRY", str(FX))
    from onysoft_tools.iam_record import attributed

    with TestClient(attributed(proxy_app.app, "ProxyFunction")) as client:
        yield client


def new_key(kind: str, amount: str = "100", **key_settings):
    """An account of `kind` topped up with `amount`, a key on it, and the headers the adapter would send
    (the authorizer's context as onysoft.authorization builds it)."""
    from onysoft.authorization import authorize

    account = create_account(kind, name=f"test {kind}")
    top_up(account.account_id, money.parse_amount(amount))
    created = create_key(account.account_id, name="k", **key_settings)
    record = created.record
    context = authorize(f"Bearer {created.plaintext}")
    headers = {
        "authorization": f"Bearer {created.plaintext}",
        REQUEST_CONTEXT_HEADER: json.dumps({"authorizer": context.to_authorizer_context()}),
    }
    return account, record, headers


@pytest.fixture
def moto_app():
    """moto server's WSGI app in-process, with serial_moto's transaction patch (the local gateway's journal tests)."""
    from moto.core.base_backend import BackendDict
    from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app

    from onysoft_tools.local import moto_transactions

    moto_transactions.install()
    BackendDict.reset()
    yield DomainDispatcherApplication(create_backend_app)
    BackendDict.reset()  # a "restart": moto's memory is gone, only the files remain


@pytest.fixture(autouse=True)
def one_rate_window(monkeypatch):
    """A unit test runs inside one rate-limit minute: one that fills a window (rpm 3, then a 429) must not see
    the next minute start on a loaded machine, whose fresh counters admit again (CI-flaky otherwise).
    Only the current window is pinned: an explicit time still gets its own."""
    from onysoft import rate_limits

    real = rate_limits.current_window
    pinned = real()
    monkeypatch.setattr(rate_limits, "current_window", lambda now=None: pinned if now is None else real(now))


@pytest.fixture(scope="module")
def module_tables():
    """moto's in-process DynamoDB with the template's tables for a whole module: for modules that write one
    costly set of books once (a hundred and more calls) and read it in many tests (tests/conftest.py's
    aws_tables is per test). Its tests must leave the books as they found them, or write apart from them."""
    import boto3
    from moto import mock_aws

    from onysoft import config
    from onysoft.models import bind_tables
    from onysoft_tools import template

    with pytest.MonkeyPatch.context() as patch, mock_aws():
        for name in ("AWS_ENDPOINT_URL_DYNAMODB", "AWS_ENDPOINT_URL"):
            patch.delenv(name, raising=False)
        client = boto3.client("dynamodb", region_name="us-east-1")
        names = {logical: config.table_name(env) for logical, env in template.TABLE_ENV.items()}
        for definition in template.table_definitions(template.load_template(), names):
            client.create_table(**definition)
        bind_tables()
        yield patch


@pytest.fixture
def dynamodb_reads(aws_tables):
    """Items each DynamoDB call of the shared client read since the last call of the fixture's function:
    [(table, index, operation, items)] (tests.helpers.ItemsRead)."""
    from onysoft.models import Account
    from tests.helpers import ItemsRead

    recorder = ItemsRead().install(Account._get_connection().connection.client)
    yield recorder.take
    recorder.uninstall()


@pytest.fixture(autouse=True)
def operator_signed_in_with_mfa(request, monkeypatch):
    """The dashboard API takes the operator only from a sign-in with TOTP, read from the user pool (onysoft.mfa).
    Unit tests' operator claims name no pool user, so here they count as such a sign-in; the tests of the check
    itself (tests/unit/test_mfa.py) are marked `real_mfa` and read moto's pool."""
    from onysoft import mfa

    mfa.forget()
    if request.node.get_closest_marker("real_mfa") is None:
        monkeypatch.setattr(mfa, "totp_enabled", lambda username: True)
