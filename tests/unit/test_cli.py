"""The `onysoft` CLI against moto's in-process DynamoDB (tables from template.yaml).

The CLI contract (DESIGN.md) is what users' scripts rely on: these tests check names, JSON fields,
values and exit codes, and that a plaintext key is printed once and stored nowhere.
"""

import json
import re
import socket
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from onysoft import clock, keys
from onysoft.provider_usage import Usage
from onysoft_tools.cli import main

KEY_PATTERN = re.compile(r"^sk-ony-[0-9a-f]{48}$")
ANY_KEY = re.compile(r"sk-ony-[0-9a-f]{48}")


@pytest.fixture(autouse=True)
def _isolated_environment(monkeypatch, tmp_path):
    """Whatever settings.apply() writes to os.environ is undone; no developer's .onysoft is ever read."""
    import os

    from onysoft.config import TABLE_ENV_DEFAULTS

    for name in ("AWS_ENDPOINT_URL_DYNAMODB", "AWS_ENDPOINT_URL", "ONYSOFT_STATE_DIR", *TABLE_ENV_DEFAULTS):
        monkeypatch.delenv(name, raising=False)
    for name in ("AWS_REGION", "AWS_DEFAULT_REGION"):
        monkeypatch.setenv(name, os.environ.get(name, "us-east-1"))
    monkeypatch.chdir(tmp_path)  # the default state dir (.onysoft) is then an empty, fresh one
    yield
    from onysoft.models import bind_tables

    monkeypatch.undo()
    bind_tables()


@pytest.fixture
def cli(aws_tables, capsys, tmp_path):
    """Run `onysoft ARGS --state-dir <empty dir>`; returns (exit code, stdout, stderr)."""
    state = tmp_path / "state"

    def run(*args: str) -> tuple[int, str, str]:
        capsys.readouterr()
        code = main([*args, "--state-dir", str(state)])
        out, err = capsys.readouterr()
        return code, out, err

    return run


@pytest.fixture
def cli_json(cli):
    """Run with --json: exit 0 and exactly one JSON object on stdout."""

    def run(*args: str) -> dict:
        code, out, err = cli(*args, "--json")
        assert code == 0, err
        document = json.loads(out)  # the whole of stdout is one JSON document
        assert isinstance(document, dict)
        return document

    return run


def assert_usage_error(result, *fragments: str) -> None:
    code, out, err = result
    assert code == 2
    assert out == ""
    assert err.startswith("onysoft: error:") and err.count("\n") == 1
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment in err


def new_account(cli_json, kind="user", *extra) -> dict:
    return cli_json("accounts", "create", "--kind", kind, *extra)


# ---------------------------------------------------------------------------------------------- accounts


@pytest.mark.parametrize(
    ("kind", "currency", "markup_pct"),
    [("user", "TRY", 50), ("project", "TRY", 50), ("partner_project", "USD", 50), ("partner_customer", "TRY", 30)],
)
def test_accounts_create_uses_the_kinds_currency_and_markup(cli_json, kind, currency, markup_pct):
    created = cli_json("accounts", "create", "--kind", kind, "--name", f"acme {kind}", "--owner", "org-1")
    assert created["kind"] == kind
    assert created["currency"] == currency
    assert created["markup_pct"] == markup_pct and isinstance(created["markup_pct"], int)
    assert re.fullmatch(r"acct_[0-9a-f]{16}", created["account_id"])
    assert created["balance"] == "0.000000" and created["balance_micros"] == 0
    assert created["name"] == f"acme {kind}" and created["owner"] == "org-1"
    assert created["created_at"].endswith("Z")
    clock.parse_iso(created["created_at"])

    shown = cli_json("accounts", "show", created["account_id"])
    assert shown == created


def test_accounts_create_markup_override(cli_json):
    created = new_account(cli_json, "project", "--markup", "12.5")
    assert created["markup_pct"] == 12.5
    assert cli_json("accounts", "show", created["account_id"])["markup_pct"] == 12.5
    assert new_account(cli_json, "partner_customer", "--markup", "0")["markup_pct"] == 0
    assert new_account(cli_json, "user", "--markup", "75")["markup_pct"] == 75


@pytest.mark.parametrize("markup", ["-5", "abc", "12.345", "", "1e2", "30%"])
def test_accounts_create_rejects_bad_markup(cli, aws_tables, markup):
    assert_usage_error(cli("accounts", "create", "--kind", "user", "--markup", markup, "--json"), "markup")
    assert aws_tables.scan(TableName=_table(aws_tables, "accounts"))["Count"] == 0


def test_accounts_create_rejects_markup_above_the_kinds_bound(cli):
    assert_usage_error(cli("accounts", "create", "--kind", "partner_customer", "--markup", "250"), "200%")


def test_accounts_create_rejects_an_unknown_kind(cli):
    code, out, err = cli("accounts", "create", "--kind", "reseller")
    assert code == 2 and out == "" and "invalid choice" in err


@pytest.mark.parametrize(("amount", "micros"), [("12.5", 12_500_000), ("0.000001", 1), ("3", 3_000_000)])
def test_topup_is_exact(cli_json, amount, micros):
    account = new_account(cli_json)
    topped = cli_json("accounts", "topup", account["account_id"], amount)
    assert topped["balance_micros"] == micros
    assert Decimal(topped["balance"]) == Decimal(amount)
    assert topped["currency"] == "TRY"
    again = cli_json("accounts", "topup", account["account_id"], amount)
    assert again["balance_micros"] == 2 * micros
    assert cli_json("accounts", "show", account["account_id"])["balance_micros"] == 2 * micros


@pytest.mark.parametrize("amount", ["-1", "0", "abc", "1.0000001", "1e3", "0.0000001", "1,5", "nan"])
def test_topup_rejects_bad_amounts(cli, cli_json, amount):
    account = new_account(cli_json)
    assert_usage_error(cli("accounts", "topup", account["account_id"], amount, "--json"))
    assert cli_json("accounts", "show", account["account_id"])["balance_micros"] == 0


def test_unknown_account_is_a_usage_error(cli):
    missing = "acct_0000000000000000"
    assert_usage_error(cli("accounts", "show", missing), missing)
    assert_usage_error(cli("accounts", "topup", missing, "5", "--json"), missing)
    assert_usage_error(cli("keys", "create", "--account", missing, "--json"), missing)
    assert_usage_error(cli("keys", "list", "--account", missing), missing)
    assert_usage_error(cli("usage", "--account", missing, "--json"), missing)


def test_accounts_update_and_list(cli, cli_json):
    account = new_account(cli_json, "project", "--owner", "org-7")
    other = new_account(cli_json, "user")
    updated = cli_json("accounts", "update", account["account_id"], "--markup", "20", "--name", "renamed")
    assert updated["markup_pct"] == 20 and updated["name"] == "renamed"
    assert_usage_error(cli("accounts", "update", account["account_id"], "--markup", "-1"))
    owned = cli_json("accounts", "list", "--owner", "org-7")["accounts"]
    assert [a["account_id"] for a in owned] == [account["account_id"]]
    every = {a["account_id"] for a in cli_json("accounts", "list")["accounts"]}
    assert every == {account["account_id"], other["account_id"]}


def test_accounts_human_output(cli, cli_json):
    account = new_account(cli_json, "partner_project", "--name", "Partner P")
    cli_json("accounts", "topup", account["account_id"], "7.25")
    code, out, _ = cli("accounts", "show", account["account_id"])
    assert code == 0
    assert account["account_id"] in out and "7.250000 USD" in out and "50%" in out
    with pytest.raises(ValueError):
        json.loads(out)


# ---------------------------------------------------------------------------------------------- keys


@pytest.mark.parametrize("kind", ["user", "project", "partner_project", "partner_customer"])
def test_keys_create_prints_the_key_once_with_the_accounts_type(cli_json, kind):
    account = new_account(cli_json, kind)
    created = cli_json("keys", "create", "--account", account["account_id"], "--name", "ci")
    assert KEY_PATTERN.match(created["key"])
    assert created["type"] == kind
    assert created["account_id"] == account["account_id"]
    assert created["currency"] == account["currency"]
    assert created["name"] == "ci" and created["status"] == "active"
    assert re.fullmatch(r"key_[0-9a-f]{16}", created["key_id"])
    assert created["display"] == keys.display_form(created["key"])
    assert created["display"] != created["key"] and created["key"][7:] not in created["display"]
    assert created["created_at"].endswith("Z")
    assert created["expires_at"] is None and created["rpm"] is None and created["models"] is None


def test_keys_create_human_output_says_it_is_shown_once(cli, cli_json):
    account = new_account(cli_json)
    code, out, _ = cli("keys", "create", "--account", account["account_id"])
    assert code == 0
    assert len(ANY_KEY.findall(out)) == 1
    assert "not be shown again" in out


def test_keys_create_with_limits_and_models(cli, cli_json):
    account = new_account(cli_json)
    created = cli_json("keys", "create", "--account", account["account_id"], "--rpm", "10", "--tpm", "5000",
                       "--models", "openai/gpt-4o-mini, mock/echo,openai/gpt-4o-mini",
                       "--spend-limit", "2.5", "--limit-reset", "daily")
    assert created["rpm"] == 10 and created["tpm"] == 5000
    assert created["models"] == ["openai/gpt-4o-mini", "mock/echo"]
    assert created["spend_limit_micros"] == 2_500_000 and created["limit_reset"] == "daily"
    listed = cli_json("keys", "list", "--account", account["account_id"])["keys"]
    assert listed[0]["models"] == ["openai/gpt-4o-mini", "mock/echo"] and listed[0]["rpm"] == 10

    assert_usage_error(cli("keys", "create", "--account", account["account_id"], "--models", "gpt-4o"), "gpt-4o")
    assert_usage_error(cli("keys", "create", "--account", account["account_id"], "--rpm", "0"), "rpm")
    assert_usage_error(cli("keys", "create", "--account", account["account_id"], "--spend-limit", "-3"))
    code, _, _ = cli("keys", "create", "--account", account["account_id"], "--rpm", "many")
    assert code == 2
    assert len(cli_json("keys", "list", "--account", account["account_id"])["keys"]) == 1


def test_keys_list_shows_the_display_form_only(cli, cli_json):
    account = new_account(cli_json, "project")
    first = cli_json("keys", "create", "--account", account["account_id"], "--name", "first")
    second = cli_json("keys", "create", "--account", account["account_id"], "--name", "second")

    for args in (("--json",), ()):
        code, out, _ = cli("keys", "list", "--account", account["account_id"], *args)
        assert code == 0
        assert not ANY_KEY.search(out)
        for created in (first, second):
            assert created["key"] not in out and created["key"][7:] not in out
            assert created["key_id"] in out
    listed = cli_json("keys", "list", "--account", account["account_id"])["keys"]
    assert [k["key_id"] for k in listed] == [first["key_id"], second["key_id"]]
    entry = listed[0]
    assert "key" not in entry
    assert set(entry) >= {"key_id", "display", "name", "type", "status", "created_at", "last_used_at", "expires_at",
                          "request_count", "spend", "spend_micros", "rpm", "tpm", "models"}
    assert entry["display"] == first["display"] and entry["type"] == "project" and entry["status"] == "active"
    assert entry["last_used_at"] is None and entry["request_count"] == 0
    assert entry["spend"] == "0.000000" and entry["spend_micros"] == 0


def test_no_table_holds_a_plaintext_key(cli_json, aws_tables):
    plaintexts = []
    for kind in ("user", "project", "partner_project", "partner_customer"):
        account = new_account(cli_json, kind)
        plaintexts.append(cli_json("keys", "create", "--account", account["account_id"])["key"])
    dumped = ""
    for table in aws_tables.list_tables()["TableNames"]:
        items = aws_tables.scan(TableName=table, ConsistentRead=True)["Items"]
        dumped += json.dumps(items)
    assert dumped  # the scan saw the records
    for plaintext in plaintexts:
        assert plaintext not in dumped and plaintext[7:] not in dumped
        assert keys.hash_key(plaintext) in dumped
    assert not ANY_KEY.search(dumped)


def test_keys_delete_then_list(cli, cli_json):
    account = new_account(cli_json)
    doomed = cli_json("keys", "create", "--account", account["account_id"], "--name", "doomed")
    kept = cli_json("keys", "create", "--account", account["account_id"], "--name", "kept")

    deleted = cli_json("keys", "delete", doomed["key_id"])
    assert deleted["key_id"] == doomed["key_id"] and deleted["status"] == "deleted"
    assert deleted["deleted_at"].endswith("Z") and deleted["deleted_at"] >= doomed["created_at"]
    assert doomed["key"] not in json.dumps(deleted)

    active = cli_json("keys", "list", "--account", account["account_id"])["keys"]
    assert [k["key_id"] for k in active] == [kept["key_id"]]
    every = {k["key_id"]: k for k in cli_json("keys", "list", "--account", account["account_id"], "--all")["keys"]}
    assert set(every) == {doomed["key_id"], kept["key_id"]}
    assert every[doomed["key_id"]]["status"] == "deleted"
    assert every[doomed["key_id"]]["deleted_at"] == deleted["deleted_at"]
    assert every[kept["key_id"]]["status"] == "active"

    assert_usage_error(cli("keys", "delete", doomed["key_id"], "--json"), doomed["key_id"])
    assert_usage_error(cli("keys", "delete", "key_0000000000000000"), "key_0000000000000000")


# ---------------------------------------------------------------------------------------------- expiry


@pytest.mark.parametrize(("text", "delta"), [("30d", timedelta(days=30)), ("12h", timedelta(hours=12)),
                                             ("15m", timedelta(minutes=15)), ("90s", timedelta(seconds=90))])
def test_expires_in(cli_json, text, delta):
    account = new_account(cli_json)
    before = datetime.now(UTC)
    created = cli_json("keys", "create", "--account", account["account_id"], "--expires-in", text)
    after = datetime.now(UTC)
    assert created["expires_at"].endswith("Z")
    expires = clock.parse_iso(created["expires_at"])
    assert before + delta <= expires <= after + delta
    listed = cli_json("keys", "list", "--account", account["account_id"])["keys"]
    assert listed[0]["expires_at"] == created["expires_at"]


@pytest.mark.parametrize("text", ["30", "30w", "d", "-1d", "0d", "1.5h", "30 days", "", "99999999999999d"])
def test_expires_in_rejects_bad_values(cli, cli_json, text):
    account = new_account(cli_json)
    assert_usage_error(cli("keys", "create", "--account", account["account_id"], f"--expires-in={text}"),
                       "--expires-in")
    assert cli_json("keys", "list", "--account", account["account_id"])["keys"] == []


def test_expires_at(cli, cli_json):
    account = new_account(cli_json)
    created = cli_json("keys", "create", "--account", account["account_id"], "--expires-at",
                       "2099-01-02T03:04:05+03:00")
    assert created["expires_at"] == "2099-01-02T00:04:05.000000Z"
    assert_usage_error(cli("keys", "create", "--account", account["account_id"], "--expires-at",
                           "2001-01-01T00:00:00Z"), "past")
    assert_usage_error(cli("keys", "create", "--account", account["account_id"], "--expires-at", "tomorrow"))
    code, _, err = cli("keys", "create", "--account", account["account_id"], "--expires-in", "1d",
                       "--expires-at", "2099-01-01T00:00:00Z")
    assert code == 2 and "not allowed with" in err


# ---------------------------------------------------------------------------------------------- usage


def test_usage_lists_records_newest_first(cli, cli_json):
    from onysoft.models import UsageRecord

    account = new_account(cli_json)
    key = cli_json("keys", "create", "--account", account["account_id"])
    assert cli_json("usage", "--account", account["account_id"]) == {"records": []}
    for n, at in enumerate(["2026-01-01T00:00:00.000000Z", "2026-01-02T00:00:00.000000Z"]):
        UsageRecord(account_id=account["account_id"], sk=f"{at}#req_{n}", request_id=f"req_{n}",
                    key_id=key["key_id"], created_at=at, status="settled", model="mock/echo", currency="TRY",
                    prompt_tokens=10 + n, completion_tokens=20, charge_micros=1_500_001).save()
    records = cli_json("usage", "--account", account["account_id"])["records"]
    assert [r["request_id"] for r in records] == ["req_1", "req_0"]
    newest = records[0]
    assert newest["key_id"] == key["key_id"] and newest["model"] == "mock/echo" and newest["status"] == "settled"
    assert newest["prompt_tokens"] == 11 and newest["completion_tokens"] == 20
    assert newest["charge_micros"] == 1_500_001 and newest["charge"] == "1.500001"
    assert newest["created_at"] == "2026-01-02T00:00:00.000000Z"
    assert len(cli_json("usage", "--account", account["account_id"], "--limit", "1")["records"]) == 1
    code, out, _ = cli("usage", "--account", account["account_id"])
    assert code == 0 and "req_1" in out and "1.500001 TRY" in out


# ---------------------------------------------------------------------------------------------- catalog, fx


def test_catalog_set_defaults_provider_and_upstream_from_the_model(cli_json):
    entry = cli_json("catalog", "set", "openai/gpt-4o-mini", "--input-usd-per-mtok", "0.15",
                     "--output-usd-per-mtok", "0.60")
    assert entry["model"] == "openai/gpt-4o-mini"
    assert entry["provider"] == "openai" and entry["upstream_model"] == "gpt-4o-mini"
    assert Decimal(entry["input_usd_per_mtok"]) == Decimal("0.15")
    assert Decimal(entry["output_usd_per_mtok"]) == Decimal("0.60")
    assert entry["enabled"] is True

    custom = cli_json("catalog", "set", "acme/fast", "--input-usd-per-mtok", "1", "--output-usd-per-mtok", "2",
                      "--provider", "openai", "--upstream-model", "gpt-4o", "--disable")
    assert custom["provider"] == "openai" and custom["upstream_model"] == "gpt-4o" and custom["enabled"] is False

    models = {m["model"]: m for m in cli_json("catalog", "list")["models"]}
    assert set(models) == {"openai/gpt-4o-mini", "acme/fast"}
    assert models["acme/fast"]["enabled"] is False and models["openai/gpt-4o-mini"]["provider"] == "openai"


def test_catalog_set_several_models_at_the_same_prices(cli, cli_json):
    both = cli_json("catalog", "set", "openai/a", "mistral/b", "--input-usd-per-mtok", "1",
                    "--output-usd-per-mtok", "3", "--max-output-tokens", "500")
    assert [(m["model"], m["provider"], m["upstream_model"]) for m in both["models"]] == [
        ("openai/a", "openai", "a"), ("mistral/b", "mistral", "b")]
    assert all(m["max_output_tokens"] == 500 and Decimal(m["output_usd_per_mtok"]) == 3 for m in both["models"])
    # One upstream name cannot be every model's.
    assert_usage_error(cli("catalog", "set", "openai/c", "openai/d", "--input-usd-per-mtok", "1",
                           "--output-usd-per-mtok", "3", "--upstream-model", "gpt-4o"))
    assert {m["model"] for m in cli_json("catalog", "list")["models"]} == {"openai/a", "mistral/b"}


@pytest.mark.parametrize("bad", [["gpt-4o", "1", "2"], ["openai/", "1", "2"], ["openai/x", "-1", "2"],
                                 ["openai/x", "1", "abc"], ["openai/x", "nan", "1"]])
def test_catalog_set_rejects_bad_input(cli, bad):
    model, input_price, output_price = bad
    assert_usage_error(cli("catalog", "set", model, "--input-usd-per-mtok", input_price,
                           "--output-usd-per-mtok", output_price))


def test_fx_set_and_show(cli, cli_json):
    assert cli_json("fx", "show") == {"pair": "USDTRY", "rate": None, "updated_at": None, "age_hours": None,
                                      "state": "missing"}
    fx = cli_json("fx", "set", "USDTRY", "41.5")
    assert fx["pair"] == "USDTRY" and Decimal(fx["rate"]) == Decimal("41.5") and fx["updated_at"].endswith("Z")
    assert (fx["state"], fx["age_hours"]) == ("fresh", 0)
    assert {k: v for k, v in cli_json("fx", "show").items() if k != "age_hours"} == {
        k: v for k, v in fx.items() if k != "age_hours"}
    from onysoft import catalog

    assert catalog.get_fx("USDTRY")[0] == Decimal("41.5")
    assert_usage_error(cli("fx", "set", "EURTRY", "45"), "USDTRY")
    assert_usage_error(cli("fx", "set", "USDTRY", "0"))
    assert_usage_error(cli("fx", "set", "USDTRY", "abc"))
    assert catalog.get_fx("USDTRY")[0] == Decimal("41.5")


# ---------------------------------------------------------------------------------------------- the command line


def test_options_work_before_and_after_the_subcommand(aws_tables, capsys, tmp_path):
    state = str(tmp_path / "state")
    assert main(["--state-dir", state, "--json", "accounts", "create", "--kind", "user"]) == 0
    created = json.loads(capsys.readouterr().out)
    assert main(["accounts", "show", created["account_id"], "--json", "--state-dir", state]) == 0
    assert json.loads(capsys.readouterr().out)["account_id"] == created["account_id"]


def test_help_and_missing_subcommand(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for command in ("dev", "accounts", "keys", "usage", "catalog", "fx"):
        assert command in out
    assert main(["accounts"]) == 2
    assert main([]) == 2
    assert main(["keys", "list"]) == 2  # --account is required
    assert main(["keys", "list", "--account", "a", "--bogus"]) == 2


def test_dev_is_wired_to_the_dev_module(monkeypatch, capsys):
    from onysoft_tools import dev

    seen = {}

    def fake_run(args):
        seen.update(vars(args))
        return 7

    monkeypatch.setattr(dev, "run", fake_run)
    assert main(["dev", "--port", "3999", "--state-dir", "somewhere"]) == 7
    assert seen["port"] == 3999 and seen["state_dir"] == "somewhere"
    assert main(["--state-dir", "elsewhere", "dev"]) == 7
    assert seen["state_dir"] == "elsewhere" and seen["port"] == 3000
    assert main(["dev", "--port", "not-a-port"]) == 2


def test_unreachable_dynamodb_is_exit_1_without_a_traceback(capsys, tmp_path):
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    code = main(["accounts", "show", "acct_0000000000000000", "--json", "--endpoint-url",
                 f"http://127.0.0.1:{port}", "--state-dir", str(tmp_path)])
    out, err = capsys.readouterr()
    assert code == 1 and out == ""
    assert err.startswith("onysoft: error:") and f"127.0.0.1:{port}" in err
    assert "Traceback" not in err and err.count("\n") == 1


def test_commands_read_the_state_dirs_dev_env(aws_tables, capsys, tmp_path):
    """dev.env names the tables: a CLI pointed at a state dir uses them (here: tables that do not exist)."""
    from onysoft_tools import settings

    state = tmp_path / "state"
    settings.write_env_file(state / settings.ENV_FILE_NAME, {"ONYSOFT_TABLE_ACCOUNTS": "elsewhere-accounts"})
    code = main(["accounts", "create", "--kind", "user", "--state-dir", str(state)])
    out, err = capsys.readouterr()
    assert code == 1 and out == "" and "table" in err and "Traceback" not in err


def _table(client, fragment: str) -> str:
    return next(name for name in client.list_tables()["TableNames"] if fragment in name)


def test_cli_actions_leave_audit_records_as_the_platform(cli_json, cli):
    from onysoft import audit, principals

    account = new_account(cli_json, "partner_customer", "--owner", "p9")
    cli_json("accounts", "topup", account["account_id"], "12.5")
    cli_json("accounts", "update", account["account_id"], "--markup", "40")
    cli_json("accounts", "update", account["account_id"], "--markup", "40")  # no change: nothing to record
    key = cli_json("keys", "create", "--account", account["account_id"], "--name", "ci")
    cli_json("keys", "delete", key["key_id"])
    assert cli("keys", "delete", key["key_id"])[0] == 2  # already deleted: refused, and not recorded

    owner_log = list(audit.iter_all(principals.parse("partner:p9")))
    assert [r.action for r in owner_log] == ["key.delete", "key.create", "account.update", "account.topup",
                                             "account.create"]
    assert {r.actor for r in owner_log} == {"operator"}
    assert all(r.actor_sub.startswith("cli:") for r in owner_log)
    assert {r.target_account_id for r in owner_log} == {account["account_id"]}
    assert json.loads(owner_log[3].details) == {"amount": "12.500000", "amount_micros": 12_500_000, "currency": "TRY"}
    assert json.loads(owner_log[2].details) == {"markup_pct": {"from": 30, "to": 40}}
    assert key["key"] not in json.dumps([r.details for r in owner_log])
    assert len(list(audit.iter_all(principals.parse("operator")))) == 5


def test_sweep_closes_stale_holds_now(cli, cli_json, monkeypatch):
    from onysoft import billing, catalog, clock, hold_sizing
    from onysoft.api_keys import find_by_key_id
    from onysoft.caller import CallerContext

    account = cli_json("accounts", "create", "--kind", "partner_project")
    cli_json("accounts", "topup", account["account_id"], "10")
    key = find_by_key_id(cli_json("keys", "create", "--account", account["account_id"])["key_id"])
    price = catalog.set_model("mock/echo", input_usd_per_mtok="1", output_usd_per_mtok="2")
    factors = hold_sizing.ChargeFactors(price, 5000, Decimal(1), "")
    caller = CallerContext(key_id=key.key_id, key_type=key.key_type, account_id=account["account_id"],
                           currency="USD", markup_bp=5000)
    plan = hold_sizing.HoldPlan(100, 10, True, factors.charge_micros(Usage(100, 10)))
    two_hours_ago = clock.to_iso(clock.utc_now() - timedelta(hours=2))
    with monkeypatch.context() as old:  # holds placed two hours ago: stale for any sweep
        old.setattr(clock, "now_iso", lambda: two_hours_ago)
        for request_id in ("req_sent", "req_unsent"):
            hold = billing.place_hold(request_id=request_id, key_hash=key.key_hash, caller=caller, plan=plan,
                                      factors=factors, endpoint="chat.completions", stream=False, model="mock/echo")
            if request_id == "req_sent":
                billing.mark_sent(hold)
    # Never below the proxy's deadline (870 s by default) plus a minute: a younger hold may still be in flight.
    code, _, err = cli("sweep", "--older-than", "15m")
    assert code == 2 and "at least 930 s" in err
    assert cli_json("sweep", "--older-than", "3h") == {"settled": 0, "released": 0, "already_closed": 0,
                                                      "close_failures": 0, "quarantined": 0,
                                                      "older_than_seconds": 10800}
    swept = cli_json("sweep")  # 20 minutes
    assert (swept["settled"], swept["released"], swept["close_failures"], swept["older_than_seconds"]) == (
        1, 1, 0, 1200)
    # The sent one is charged its whole hold: 100 prompt tokens at $1/M and 10 output at $2/M, +50%: 180 µUSD.
    assert cli_json("accounts", "show", account["account_id"])["balance_micros"] == 10_000_000 - 180
    code, out, _ = cli("sweep")  # without --json: a summary for people
    assert code == 0 and "released" in out and "1200 s" in out
    code, _, err = cli("sweep", "--older-than", "soon")
    assert code == 2 and "--older-than" in err
