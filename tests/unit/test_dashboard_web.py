"""The browser app's files as the dashboard function serves them (functions/dashboard/app.py, "the web app"):
no token needed, no data, strict CSP, cache headers that let a deploy through at the next page load."""

import json
import re

import pytest

from tests.helpers import load_function_module
from tests.unit.test_dashboard import make_event

dashboard_app = load_function_module("dashboard")


def get(resource: str, path: str | None = None, **kwargs) -> dict:
    event = make_event("GET", resource, **kwargs)
    if path is not None:
        event["path"] = path
    return dashboard_app.handler(event, None)


def test_the_app_is_served_at_its_slash_url(monkeypatch):
    monkeypatch.delenv("AWS_ENDPOINT_URL_COGNITO_IDP", raising=False)
    redirect = get("/dashboard", "/dashboard")
    assert redirect["statusCode"] == 301 and redirect["headers"]["Location"] == "dashboard/"
    page = get("/dashboard", "/dashboard/")
    headers = page["headers"]
    assert page["statusCode"] == 200 and headers["Content-Type"].startswith("text/html")
    assert headers["Cache-Control"] == "no-cache"
    csp = dict(part.strip().split(" ", 1) for part in headers["Content-Security-Policy"].split(";"))
    assert csp["default-src"] == "'none'" and csp["script-src"] == "'self'" and csp["style-src"] == "'self'"
    assert csp["connect-src"] == "'self' https://cognito-idp.us-east-1.amazonaws.com"  # the API and the pool only
    assert csp["frame-ancestors"] == "'none'" and headers["X-Content-Type-Options"] == "nosniff"
    html = page["body"]
    assert re.search(r'src="static/app\.js\?v=[0-9a-f]{16}"', html)
    assert not re.search(r'(src|href)="(https?:)?//', html)  # nothing from another host
    assert "<script>" not in html and " style=" not in html  # nothing inline: the CSP would refuse it


def test_assets_are_immutable_only_under_their_current_hash():
    html = get("/dashboard", "/dashboard/")["body"]
    version = re.search(r"static/app\.js\?v=([0-9a-f]{16})", html).group(1)
    current = get("/dashboard/static/{file}", path_params={"file": "app.js"}, query={"v": version})
    assert current["statusCode"] == 200 and current["headers"]["Content-Type"].startswith("text/javascript")
    assert current["headers"]["Cache-Control"] == "public, max-age=31536000, immutable"
    assert "InitiateAuth" in current["body"]
    stale = get("/dashboard/static/{file}", path_params={"file": "app.js"}, query={"v": "0" * 16})
    assert stale["headers"]["Cache-Control"] == "no-cache"
    css = get("/dashboard/static/{file}", path_params={"file": "app.css"})
    assert css["statusCode"] == 200 and css["headers"]["Content-Type"].startswith("text/css")


@pytest.mark.parametrize("name", ["index.html", "../app.py", "app.py", "%2e%2e%2fapp.py", ""])
def test_only_the_apps_assets_are_files(name):
    answer = get("/dashboard/static/{file}", path_params={"file": name})
    assert answer["statusCode"] == 404
    assert json.loads(answer["body"])["error"]["code"] == "file_not_found"


def test_config_holds_the_public_sign_in_settings_only(monkeypatch):
    monkeypatch.setenv("ONYSOFT_USER_POOL_CLIENT_ID", "client-123")
    monkeypatch.setenv("AWS_ENDPOINT_URL_COGNITO_IDP", "http://127.0.0.1:5555")
    answer = get("/dashboard/config.json")
    assert answer["statusCode"] == 200 and answer["headers"]["Cache-Control"] == "no-cache"
    assert json.loads(answer["body"]) == {"region": "us-east-1", "cognitoEndpoint": "http://127.0.0.1:5555/",
                                          "clientId": "client-123"}
    assert "connect-src 'self' http://127.0.0.1:5555;" in answer["headers"]["Content-Security-Policy"]


def test_the_json_api_still_needs_a_principal():
    answer = get("/dashboard/accounts")
    assert answer["statusCode"] == 401
