"""onysoft_tools.settings: dev.env round trip, and apply() choosing between a local gateway and AWS."""

import os

import pytest

from onysoft import config
from onysoft.models import ALL_MODELS, Account, ApiKey, CatalogEntry, bind_tables
from onysoft_tools import settings


@pytest.fixture(autouse=True)
def _restore_environment(monkeypatch):
    """apply() writes os.environ: every name it may touch is restored by monkeypatch, then the models rebound."""
    for name in ("AWS_ENDPOINT_URL_DYNAMODB", "ONYSOFT_STATE_DIR", "ONYSOFT_GATEWAY_URL", *config.TABLE_ENV_DEFAULTS):
        monkeypatch.delenv(name, raising=False)
    for name in ("AWS_REGION", "AWS_DEFAULT_REGION"):
        monkeypatch.setenv(name, os.environ.get(name, "us-east-1"))
    yield
    monkeypatch.undo()
    bind_tables()


def _dev_env(endpoint="http://127.0.0.1:4567") -> dict[str, str]:
    return {
        "AWS_ENDPOINT_URL_DYNAMODB": endpoint,
        "AWS_REGION": "eu-central-1",
        "ONYSOFT_TABLE_API_KEYS": "dev-api-keys",
        "ONYSOFT_TABLE_ACCOUNTS": "dev-accounts",
        "ONYSOFT_TABLE_USAGE": "dev-usage",
        "ONYSOFT_TABLE_RATE_LIMITS": "dev-rate-limits",
        "ONYSOFT_TABLE_CATALOG": "dev-catalog",
        "ONYSOFT_GATEWAY_URL": "http://127.0.0.1:3000",
    }


def test_env_file_round_trip(tmp_path):
    path = tmp_path / "nested" / "dev.env"
    values = _dev_env()
    settings.write_env_file(path, values)
    assert path.read_text().startswith("#")  # a comment says who wrote it
    assert settings.read_env_file(path) == values


def test_read_env_file_skips_comments_blanks_and_junk(tmp_path):
    path = tmp_path / "dev.env"
    path.write_text("# comment\n\n  A = 1 \nnot a setting\nB=x=y\nC=\n")
    assert settings.read_env_file(path) == {"A": "1", "B": "x=y", "C": ""}


def test_state_dir_precedence(monkeypatch, tmp_path):
    assert str(settings.state_dir()) == settings.DEFAULT_STATE_DIR
    monkeypatch.setenv("ONYSOFT_STATE_DIR", str(tmp_path / "from-env"))
    assert settings.state_dir() == tmp_path / "from-env"
    assert settings.state_dir(str(tmp_path / "explicit")) == tmp_path / "explicit"


def test_apply_reads_dev_env_from_the_state_dir_and_rebinds_the_models(tmp_path):
    settings.write_env_file(tmp_path / settings.ENV_FILE_NAME, _dev_env())
    used = settings.apply(state_dir_arg=str(tmp_path))
    assert used == tmp_path / settings.ENV_FILE_NAME
    assert os.environ["AWS_ENDPOINT_URL_DYNAMODB"] == "http://127.0.0.1:4567"
    assert os.environ["ONYSOFT_TABLE_ACCOUNTS"] == "dev-accounts"
    assert Account.Meta.table_name == "dev-accounts"
    assert ApiKey.Meta.table_name == "dev-api-keys"
    assert CatalogEntry.Meta.table_name == "dev-catalog"
    assert all(model.Meta.region == "eu-central-1" for model in ALL_MODELS)


def test_apply_uses_onysoft_state_dir_from_the_environment(monkeypatch, tmp_path):
    settings.write_env_file(tmp_path / settings.ENV_FILE_NAME, _dev_env("http://127.0.0.1:9999"))
    monkeypatch.setenv("ONYSOFT_STATE_DIR", str(tmp_path))
    assert settings.apply() == tmp_path / settings.ENV_FILE_NAME
    assert os.environ["AWS_ENDPOINT_URL_DYNAMODB"] == "http://127.0.0.1:9999"


def test_explicit_endpoint_and_region_win_over_dev_env(tmp_path):
    settings.write_env_file(tmp_path / settings.ENV_FILE_NAME, _dev_env())
    used = settings.apply(state_dir_arg=str(tmp_path), endpoint_url="http://localhost:8000", region="ap-south-1")
    assert used is None  # an explicit endpoint means "not the local gateway"
    assert os.environ["AWS_ENDPOINT_URL_DYNAMODB"] == "http://localhost:8000"
    assert os.environ["AWS_REGION"] == os.environ["AWS_DEFAULT_REGION"] == "ap-south-1"
    assert Account.Meta.table_name == config.TABLE_ENV_DEFAULTS["ONYSOFT_TABLE_ACCOUNTS"]  # dev.env not read
    assert Account.Meta.region == "ap-south-1"


def test_without_dev_env_the_environment_names_the_aws_tables(monkeypatch, tmp_path):
    monkeypatch.setenv("ONYSOFT_TABLE_ACCOUNTS", "prod-accounts")
    assert settings.apply(state_dir_arg=str(tmp_path / "missing")) is None
    assert "AWS_ENDPOINT_URL_DYNAMODB" not in os.environ
    assert Account.Meta.table_name == "prod-accounts"
    assert ApiKey.Meta.table_name == config.TABLE_ENV_DEFAULTS["ONYSOFT_TABLE_API_KEYS"]
