"""Shared test setup: dummy AWS credentials (nothing may reach AWS) and a mock_aws fixture with the
tables created from template.yaml, so unit tests use the same schema as the deployment."""

import os

import pytest

os.environ.update(
    AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing", AWS_SESSION_TOKEN="testing",
    AWS_SECURITY_TOKEN="testing", AWS_REGION="us-east-1", AWS_DEFAULT_REGION="us-east-1",
)
os.environ.pop("AWS_ENDPOINT_URL_DYNAMODB", None)
os.environ.pop("AWS_PROFILE", None)

# IAM conformance (tests/test_iam_conformance.py): every AWS call a function's handler makes in this process
# or in an `onysoft dev` it starts is recorded here. Set ONYSOFT_IAM_RECORD yourself to keep the records
# (then check them with `python -m onysoft_tools.iam_policy <dir>`); they are added to, never cleared.
if not os.environ.get("ONYSOFT_IAM_RECORD"):
    import atexit
    import shutil
    import tempfile

    os.environ["ONYSOFT_IAM_RECORD"] = tempfile.mkdtemp(prefix="onysoft-iam-")
    atexit.register(shutil.rmtree, os.environ["ONYSOFT_IAM_RECORD"], ignore_errors=True)
from onysoft_tools import iam_record  # noqa: E402

iam_record.install()

IAM_CHECK = "tests/test_iam_conformance.py"
WHOLE_SUITE_ENV = "ONYSOFT_IAM_WHOLE_SUITE"  # set by `make test` for the IAM check run after the rest


def pytest_collection_modifyitems(session, config, items):
    """The IAM check runs last (it reads what every other test recorded). A permission no test used is an
    error only when the whole suite was selected: a subset cannot say what the code never needs."""
    from pathlib import Path

    tests_dir = Path(__file__).resolve().parent
    every_file = {p.resolve() for p in tests_dir.rglob("test_*.py")}
    collected = {Path(str(item.fspath)).resolve() for item in items}
    narrowed = (config.option.keyword or config.option.markexpr or config.getoption("deselect", None)
                or any("::" in str(arg) for arg in config.args) or config.getoption("lf", False))
    # `make test` runs every other test on two workers first, then the IAM check alone over the same records dir,
    # telling it so: the check alone cannot see that the whole suite ran.
    only_the_check = collected == {(tests_dir.parent / IAM_CHECK).resolve()}
    told = os.environ.get(WHOLE_SUITE_ENV) == "1" and only_the_check
    config.onysoft_whole_suite = (collected == every_file and not narrowed) or told
    items.sort(key=lambda item: item.nodeid.startswith(IAM_CHECK))


@pytest.fixture
def aws_tables(monkeypatch):
    """moto's in-process DynamoDB with the template's tables. Unit tests only: never for concurrency."""
    import boto3
    from moto import mock_aws

    from onysoft import config
    from onysoft.models import bind_tables
    from onysoft_tools import template

    # A real endpoint left in the environment (a dev.env read by another test) would bypass the mock.
    for name in ("AWS_ENDPOINT_URL_DYNAMODB", "AWS_ENDPOINT_URL"):
        monkeypatch.delenv(name, raising=False)
    with mock_aws():
        tpl = template.load_template()
        names = {logical: config.table_name(env) for logical, env in template.TABLE_ENV.items()}
        client = boto3.client("dynamodb", region_name="us-east-1")
        for definition in template.table_definitions(tpl, names):
            client.create_table(**definition)
        bind_tables()
        yield client



@pytest.fixture(autouse=True)
def _environment_restored():
    """Whatever a test writes to os.environ (settings.apply() reading a dev.env, say) is undone after it, so
    a leaked endpoint never points a later test's client at a server that is gone."""
    saved = dict(os.environ)
    yield
    if os.environ != saved:
        os.environ.clear()
        os.environ.update(saved)
