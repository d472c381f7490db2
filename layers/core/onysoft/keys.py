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


# Where Anthropic's API is served: there a key may also come as `x-api-key: sk-ony-…` (Anthropic's own header,
# which its clients send: Claude Code with ANTHROPIC_API_KEY, the Vercel AI SDK, Anthropic's SDKs before 2.0).
ANTHROPIC_PATHS = ("/v1/messages", "/v1/messages/count_tokens")


def request_key(authorization: str | None, x_api_key: str | None, *, anthropic: bool) -> str | None:
    """The key a request carries, or None. An Authorization header decides when there is one (a request with
    both headers is judged by Authorization alone: one rule in the authorizer and the proxy, never two keys);
    without it, on Anthropic's routes, `x-api-key` holding exactly one well-formed key (no scheme word)."""
    if authorization is not None:
        return bearer_key(authorization)
    if not anthropic or x_api_key is None or len(x_api_key) > 200:
        return None
    return x_api_key if is_well_formed(x_api_key) else None
