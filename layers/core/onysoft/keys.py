"""API key material: generation, format check, hashing and the display form.

Only the SHA-256 of a key is ever stored; the plaintext exists once, in the creation response.
"""

import hashlib
import re
import secrets

KEY_PREFIX = "sk-ony-"
KEY_HEX_LENGTH = 48  # 24 random bytes
_KEY_PATTERN = re.compile(r"sk-ony-[0-9a-f]{48}")


def generate_key() -> str:
    return KEY_PREFIX + secrets.token_hex(KEY_HEX_LENGTH // 2)


def is_well_formed(key: str) -> bool:
    return bool(_KEY_PATTERN.fullmatch(key))


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode("ascii")).hexdigest()


def display_form(key: str) -> str:
    """What lists show: the prefix, four hex digits from each end, never enough to use."""
    secret = key[len(KEY_PREFIX):]
    return f"{KEY_PREFIX}{secret[:4]}…{secret[-4:]}"


def new_key_id() -> str:
    return "key_" + secrets.token_hex(8)


def bearer_key(authorization: str | None) -> str | None:
    """The key in an 'Authorization: Bearer sk-ony-…' header, or None if the header is not that.

    Strict on purpose: one scheme word, one space, a well-formed key, nothing else.
    """
    if not authorization or len(authorization) > 200:
        return None
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not is_well_formed(token):
        return None
    return token
