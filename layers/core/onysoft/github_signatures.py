"""GitHub's signature on a secret-scanning report: ECDSA P-256 with SHA-256 over the raw body.

GitHub sends `Github-Public-Key-Identifier` (which of its keys signed) and `Github-Public-Key-Signature` (base64
of the DER signature). Its public keys are at https://api.github.com/meta/public_keys/secret_scanning:
`{"public_keys": [{"key_identifier", "key" (PEM), "is_current"}]}`. Locally and in tests the same JSON is read
from the file ONYSOFT_GITHUB_SECRET_SCANNING_KEYS names, so a test signs its own reports.

The keys are cached for KEYS_MAX_AGE seconds per Lambda instance; an identifier not in the cache refetches them,
at most once every REFETCH_EVERY seconds (a key GitHub has just added; never a refetch per forged request).
Imported by the secret-scanning function only: `cryptography` is in its own requirements, not the core layer.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import os
import threading
import time

import httpx
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_pem_public_key

KEYS_URL = "https://api.github.com/meta/public_keys/secret_scanning"
KEYS_FILE_ENV = "ONYSOFT_GITHUB_SECRET_SCANNING_KEYS"
KEYS_MAX_AGE = 3600
REFETCH_EVERY = 60
MAX_SIGNATURE_CHARS = 200  # a P-256 DER signature is at most 72 bytes: 96 base64 characters

logger = logging.getLogger("onysoft.github_signatures")


class KeysUnavailable(Exception):
    """GitHub's public keys could not be read (the report cannot be checked: GitHub retries later)."""


def _parse(document: dict) -> dict[str, ec.EllipticCurvePublicKey]:
    keys = {}
    for entry in document.get("public_keys") or []:
        try:
            key = load_pem_public_key(str(entry["key"]).encode())
        except (KeyError, ValueError, TypeError):
            continue
        if isinstance(key, ec.EllipticCurvePublicKey) and isinstance(key.curve, ec.SECP256R1):
            keys[str(entry.get("key_identifier"))] = key
    return keys


class PublicKeys:
    """GitHub's secret-scanning keys by identifier: from the file (local, tests) or the meta endpoint (cached)."""

    def __init__(self) -> None:
        self._keys: dict[str, ec.EllipticCurvePublicKey] = {}
        self._fetched_at = float("-inf")
        self._source: str | None = None
        self._lock = threading.Lock()

    def _load(self) -> dict[str, ec.EllipticCurvePublicKey]:
        path = os.environ.get(KEYS_FILE_ENV)
        if path:
            try:
                with open(path, encoding="utf-8") as handle:
                    return _parse(json.load(handle))
            except (OSError, ValueError) as exc:
                raise KeysUnavailable(f"cannot read {KEYS_FILE_ENV}: {exc}") from None
        try:
            answer = httpx.get(KEYS_URL, timeout=5.0, headers={"Accept": "application/json"})
            answer.raise_for_status()
            return _parse(answer.json())
        except (httpx.HTTPError, ValueError) as exc:
            raise KeysUnavailable(f"cannot read GitHub's public keys: {exc}") from None

    def get(self, identifier: str) -> ec.EllipticCurvePublicKey | None:
        with self._lock:
            source = os.environ.get(KEYS_FILE_ENV) or KEYS_URL
            age = time.monotonic() - self._fetched_at
            stale = source != self._source or age > KEYS_MAX_AGE
            if stale or (identifier not in self._keys and age > REFETCH_EVERY):
                self._keys = self._load()
                self._fetched_at, self._source = time.monotonic(), source
            return self._keys.get(identifier)


public_keys = PublicKeys()


def verify(raw_body: bytes, key_identifier: str | None, signature: str | None) -> bool:
    """True only when `signature` is a valid ECDSA P-256/SHA-256 signature of exactly these bytes by GitHub's key
    `key_identifier`. Anything missing, malformed or unknown is False; KeysUnavailable when the keys cannot be
    read at all."""
    if not key_identifier or not signature or len(signature) > MAX_SIGNATURE_CHARS or len(key_identifier) > 200:
        return False
    try:
        der = base64.b64decode(signature, validate=True)
    except (binascii.Error, ValueError):
        return False
    key = public_keys.get(key_identifier)
    if key is None:
        return False
    try:
        key.verify(der, raw_body, ec.ECDSA(hashes.SHA256()))
    except (InvalidSignature, ValueError):
        return False
    return True
