"""The dashboard's sign-in as the SAM transform deploys it (issue 23, the operator's door): TOTP in the pool,
an app client that cannot change a person's email, short ID tokens, revocable refresh tokens, and threat
protection behind a parameter (it needs Cognito's Plus tier)."""

import pytest

from tests.template.test_template import _sam_transform

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(scope="module")
def cfn() -> dict:
    return _sam_transform()


def test_the_app_client_cannot_write_email_and_its_tokens_are_short_and_revocable(cfn):
    client = cfn["Resources"]["DashboardUserPoolClient"]["Properties"]
    # A stolen access token must not move the email (then reset the password); an omitted list allows everything.
    assert client["WriteAttributes"] == ["name"]
    minutes = {"minutes": 1, "hours": 60, "days": 1440}
    units = client["TokenValidityUnits"]
    assert client["IdTokenValidity"] * minutes[units["IdToken"]] <= 15  # API Gateway cannot see a revocation
    assert client["AccessTokenValidity"] * minutes[units["AccessToken"]] <= 15
    assert client["EnableTokenRevocation"] is True  # the web app's sign-out: RevokeToken


def test_the_pool_offers_totp_to_everyone_without_forcing_it_on_tenants(cfn):
    pool = cfn["Resources"]["DashboardUserPool"]["Properties"]
    assert pool["MfaConfiguration"] == "OPTIONAL" and pool["EnabledMfas"] == ["SOFTWARE_TOKEN_MFA"]
    function = cfn["Resources"]["DashboardFunctionRole"]["Properties"]
    statements = [s for p in function["Policies"] for s in p["PolicyDocument"]["Statement"]]
    assert any(s["Action"] == ["cognito-idp:AdminGetUser"] for s in statements)  # the operator's check


def test_threat_protection_is_a_parameter_off_by_default():
    cfn = _sam_transform()
    assert cfn["Parameters"]["DashboardThreatProtection"]["Default"] == "OFF"
    assert set(cfn["Parameters"]["DashboardThreatProtection"]["AllowedValues"]) == {"OFF", "AUDIT", "ENFORCED"}
    pool = cfn["Resources"]["DashboardUserPool"]["Properties"]
    condition = cfn["Conditions"]["DashboardThreatProtectionOn"]
    assert condition == {"Fn::Not": [{"Fn::Equals": [{"Ref": "DashboardThreatProtection"}, "OFF"]}]}
    assert pool["UserPoolAddOns"] == {"Fn::If": ["DashboardThreatProtectionOn",
                                                 {"AdvancedSecurityMode": {"Ref": "DashboardThreatProtection"}},
                                                 {"Ref": "AWS::NoValue"}]}
    assert pool["UserPoolTier"] == {"Fn::If": ["DashboardThreatProtectionOn", "PLUS", {"Ref": "AWS::NoValue"}]}
