"""Helpers shared by the test suites."""

from __future__ import annotations


def load_function_module(function: str):
    """Import functions/<function>/app.py under a unique name (every function's module is `app`)."""
    import importlib.util
    import pathlib

    path = pathlib.Path(__file__).resolve().parent.parent / "functions" / function / "app.py"
    spec = importlib.util.spec_from_file_location(f"onysoft_function_{function}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if hasattr(module, "handler"):  # its AWS calls are recorded as the function's (tests/test_iam_conformance.py)
        from onysoft_tools import iam_record

        module.handler = iam_record.attributed(module.handler, iam_record.function_of_code(f"functions/{function}"))
    return module


def load_event(name: str) -> dict:
    import json
    import pathlib

    return json.loads((pathlib.Path(__file__).resolve().parent.parent / "events" / name).read_text())


# The key that events/authorizer-valid-key.json carries (tests seed it; it is no real key).
EVENT_KEY = "sk-ony-" + "0123456789abcdef" * 3


def moto_cognito_jwks():
    """moto's user pool JWKS (public) as PyJWT reads it: what `<endpoint>/<pool>/.well-known/jwks.json` serves."""
    import jwt
    from moto.utilities.utils import load_resource

    return jwt.PyJWKSet.from_dict(load_resource("cognitoidp/resources/jwks-public.json"))


def sign_like_moto_cognito(claims: dict) -> str:
    """A token signed with moto's user pool key, as moto's InitiateAuth signs: for the cases a real pool will
    not hand out on demand (an expired token, another audience or issuer, an access token)."""
    import jwt
    from moto.utilities.utils import load_resource

    key = jwt.algorithms.RSAAlgorithm.from_jwk(load_resource("cognitoidp/resources/jwks-private.json"))
    return jwt.encode(claims, key, algorithm="RS256", headers={"kid": "dummy"})


def expired_copy(token: str, *, seconds_ago: int = 60, **changes) -> str:
    """The claims of a real pool token, re-signed by moto's key, expired `seconds_ago` (plus `changes`)."""
    import time

    import jwt

    claims = jwt.decode(token, options={"verify_signature": False})
    claims.update(exp=int(time.time()) - seconds_ago, **changes)
    return sign_like_moto_cognito(claims)


def roll_up() -> None:
    """What RollupFunction does in AWS from the Usage table's stream, here and now (in-process moto): usage
    totals and keys' request counts and spend."""
    from onysoft import config
    from onysoft_tools.local.rollup_poller import RollupPoller

    RollupPoller(config.table_name("ONYSOFT_TABLE_USAGE")).drain()


def key_totals(key_id: str):
    """A key's all-time request count and spend, after rolling up what the stream holds."""
    from onysoft.usage_rollup import KeyTotals
    from onysoft.usage_rollup import key_totals as read

    roll_up()
    return read([key_id]).get(key_id, KeyTotals())


class GitHubSigner:
    """A stand-in for GitHub's secret-scanning signing key: its public key in the JSON GitHub's meta endpoint
    serves (written to `keys_file`, what ONYSOFT_GITHUB_SECRET_SCANNING_KEYS names), and reports signed as GitHub
    signs them (ECDSA P-256, SHA-256 over the raw body, the DER signature in base64)."""

    def __init__(self, keys_file, key_identifier: str = "test-key-1"):
        import json

        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import ec

        self.key_identifier = key_identifier
        self.private_key = ec.generate_private_key(ec.SECP256R1())
        pem = self.private_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()
        self.keys_file = keys_file
        keys_file.write_text(json.dumps({"public_keys": [
            {"key_identifier": key_identifier, "key": pem, "is_current": True}]}))

    def sign(self, raw: bytes, private_key=None) -> str:
        import base64

        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import ec

        return base64.b64encode((private_key or self.private_key).sign(raw, ec.ECDSA(hashes.SHA256()))).decode()

    def report(self, *matches: dict) -> tuple[bytes, dict[str, str]]:
        """A report's raw body (as GitHub sends it: a JSON array) and its two signature headers."""
        import json

        raw = json.dumps(list(matches), separators=(",", ":")).encode()
        return raw, {"Github-Public-Key-Identifier": self.key_identifier,
                     "Github-Public-Key-Signature": self.sign(raw)}


class ItemsRead:
    """A botocore recorder of the DynamoDB items each call read (issue 23: a page must read a bounded number of
    items however many the table holds): `(table, index or None, operation, items)` per call, where items is
    what DynamoDB examined (a Query's or Scan's ScannedCount, a BatchGetItem's or GetItem's items returned)."""

    def __init__(self):
        self.calls: list[tuple[str, str | None, str, int]] = []
        self._clients: list = []

    def install(self, client) -> ItemsRead:
        client.meta.events.register("before-parameter-build.dynamodb", self._params)
        client.meta.events.register("after-call.dynamodb", self._after)
        self._clients.append(client)
        return self

    def uninstall(self) -> None:
        for client in self._clients:
            client.meta.events.unregister("before-parameter-build.dynamodb", self._params)
            client.meta.events.unregister("after-call.dynamodb", self._after)

    def _params(self, params, context, **_):
        context["items_read_params"] = params

    def _after(self, parsed, model, context, **_):
        self.calls.extend(items_read(model.name, context.get("items_read_params") or {}, parsed))

    def take(self) -> list[tuple[str, str | None, str, int]]:
        taken, self.calls = self.calls, []
        return taken


def items_read(operation: str, params: dict, parsed: dict) -> list[tuple[str, str | None, str, int]]:
    """What one DynamoDB call read, from its parameters and its answer (botocore's or the wire's JSON)."""
    if operation in ("Query", "Scan"):
        count = parsed.get("ScannedCount", parsed.get("Count", len(parsed.get("Items", []))))
        return [(params.get("TableName", ""), params.get("IndexName"), operation, int(count))]
    if operation == "BatchGetItem":
        return [(table, None, operation, len(items)) for table, items in (parsed.get("Responses") or {}).items()]
    if operation == "GetItem":
        return [(params.get("TableName", ""), None, operation, 1 if parsed.get("Item") else 0)]
    return []


def self_signed_certificate(directory) -> tuple[str, str]:
    """A certificate for 127.0.0.1 that no public CA signed, and its key: (cert path, key path)."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "onysoft transport test")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(hours=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return str(cert_path), str(key_path)
