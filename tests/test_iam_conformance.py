"""IAM conformance: every AWS call a function made during this test run is allowed by that function's role
in template.yaml (as the SAM transform deploys it), and every permission a role grants was used by some
call (least privilege both ways). moto enforces no IAM, so without this a missing permission only shows
in AWS, as AccessDenied.

The calls were recorded by onysoft_tools.iam_record while the handlers ran: in-process (unit tests) and in
every `onysoft dev` the integration tests started. tests/conftest.py runs this test last. Run alone or on a
subset of the suite it checks only that the calls seen were allowed; unused permissions need the whole suite.
"""

import os

import pytest

from onysoft_tools import iam_policy, iam_record


@pytest.fixture(scope="module")
def cfn():
    return iam_policy.sam_transform()


def test_every_recorded_aws_call_is_allowed_and_every_permission_is_used(request, cfn):
    records = iam_record.read_records(os.environ[iam_record.ENV_VAR])
    whole_suite = getattr(request.config, "onysoft_whole_suite", False)
    if not records:
        pytest.skip("no function made an AWS call in this run: run the suites with it (make test)")
    report = iam_policy.check(cfn, records, check_unused=whole_suite)
    assert report.ok, "IAM conformance:\n" + report.explain()
    if whole_suite:
        assert not report.functions_without_calls, (
            "no test ran these functions' handlers, so their permissions are unproven: "
            f"{report.functions_without_calls}")
