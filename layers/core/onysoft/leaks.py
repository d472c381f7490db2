"""Leaked keys: what a key revoked by a leak report (onysoft.secret_scanning) answers: 401 `key_leaked`, with a
message that says when and where it was found. Small on purpose: the authorizer imports it.

A leaked key's current item has status `leaked`, `leaked_at`, `leak_url` (where GitHub found it; may be empty)
and `leak_source` (GitHub's `source`: content, commit, issue_comment…). An old secret of a rotated key reported
while in its grace keeps status `rotated`, with the same three fields and its grace ended.
"""

import re

# Only what a URL is made of: the message goes into JSON by API Gateway's gateway-response template as is
# (template.yaml, ACCESS_DENIED), so it must hold no quote, backslash or control character.
_UNSAFE = re.compile(r"[^A-Za-z0-9._~:/?#\[\]@!$&()*+,;=%-]")
MAX_URL = 300


def safe_url(url: str | None) -> str:
    """A URL fit to show in an error message: its unsafe characters dropped, cut to MAX_URL characters."""
    cleaned = _UNSAFE.sub("", url or "")
    return cleaned if len(cleaned) <= MAX_URL else cleaned[:MAX_URL] + "..."


def revoked_message(record) -> str:
    """The 401's message for a leaked key's item: when it was revoked and where it was found."""
    when = (record.leaked_at or "")[:19].replace("T", " ")
    where = safe_url(record.leak_url)
    found = f"it was found in public at {where}" if where else "it was found in public"
    return (f"This API key was revoked{' on ' + when + ' UTC' if when else ''}: {found} (reported by GitHub secret "
            "scanning). Create a new key and remove this one from your code and its history.")
