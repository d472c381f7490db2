"""onysoft.sigv4 signs a DynamoDB call exactly as botocore's SigV4Auth signs it (the signature AWS recomputes)."""

from __future__ import annotations

import datetime
from unittest import mock

import botocore.auth
import pytest
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from onysoft.sigv4 import Signer

WHEN = datetime.datetime(2026, 12, 3, 23, 59, 58, tzinfo=datetime.UTC)


def botocores(url: str, region: str, target: str, body: bytes, credentials: Credentials, when: datetime.datetime):
    request = AWSRequest("POST", url, data=body, headers={"X-Amz-Target": target,
                                                          "Content-Type": "application/x-amz-json-1.0"})
    with mock.patch.object(botocore.auth, "get_current_datetime", return_value=when.replace(tzinfo=None)):
        botocore.auth.SigV4Auth(credentials, "dynamodb", region).add_auth(request)
    return {name: request.headers[name] for name in request.headers.keys()}


@pytest.mark.parametrize(("url", "host"), [
    ("https://dynamodb.eu-central-1.amazonaws.com/", "dynamodb.eu-central-1.amazonaws.com"),
    ("http://127.0.0.1:8000/", "127.0.0.1:8000")])
@pytest.mark.parametrize("token", [None, "IQoJb3JpZ2luX2VjEJr//////////wEaCXVzLWVhc3QtMSJHMEUCIQ=="])
@pytest.mark.parametrize("body", [b'{"TableName":"t","Key":{"pk":{"S":"a"}}}', '{"v":{"S":"ş ü/+= ç"}}'.encode()])
def test_the_same_headers_as_botocores_signer(url, host, token, body):
    credentials = Credentials("AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY", token)
    expected = botocores(url, "eu-central-1", "DynamoDB_20120810.GetItem", body, credentials, WHEN)
    got = Signer("eu-central-1").headers(host, "DynamoDB_20120810.GetItem", "application/x-amz-json-1.0", body,
                                         credentials.get_frozen_credentials(), now=WHEN)
    assert got == expected


def test_the_signing_key_follows_the_day_and_the_secret():
    """Derived once a day: a signature after midnight, or with rotated credentials, is not signed with the old key."""
    signer = Signer("us-east-1")
    old = Credentials("AKIDEXAMPLE", "first-secret", "t1")
    new = Credentials("AKIDEXAMPLE", "rotated-secret", "t2")
    body = b"{}"
    for credentials, when in ((old, WHEN), (old, WHEN + datetime.timedelta(seconds=3)), (new, WHEN),
                              (new, WHEN + datetime.timedelta(seconds=3))):
        expected = botocores("https://dynamodb.us-east-1.amazonaws.com/", "us-east-1", "DynamoDB_20120810.PutItem",
                             body, credentials, when)
        assert signer.headers("dynamodb.us-east-1.amazonaws.com", "DynamoDB_20120810.PutItem",
                              "application/x-amz-json-1.0", body, credentials, now=when) == expected
