"""GitHub's secret-scanning partner program: a signed report of `sk-ony-` keys found in public (a repository, a
gist, an issue, npm…) revokes each live one at once, and GitHub is told which tokens were ours.

The route (`POST /secret-scanning/github`, functions/secret_scanning) checks GitHub's signature first
(onysoft.github_signatures): nothing here runs for an unsigned or wrongly signed report. Then, per distinct token:
a well-formed key whose hash is an item we hold is `true_positive` (revoked if it still worked), anything else is
`false_positive`. The answer is GitHub's feedback format: `[{"token_hash", "token_type", "label"}]`.
"""

import hashlib
import json
import logging
from dataclasses import dataclass

from onysoft import api_keys, audit, clock, events, keys, writes
from onysoft.models import Account, ApiKey
from onysoft.principals import OPERATOR, Principal

logger = logging.getLogger("onysoft.secret_scanning")


MAX_MATCHES = 1000  # one report's matches: bounded work per request (GitHub batches what it found)
MAX_TOKEN_CHARS = 1000
MAX_URL_STORED = 1000
TRUE_POSITIVE, FALSE_POSITIVE = "true_positive", "false_positive"
REPORTER = "github-secret-scanning"  # the audit records' actor_sub: the platform, acting on GitHub's report


class BadReport(ValueError):
    """Not a secret-scanning report: a JSON array of {token, type, url?, source?} objects."""


@dataclass(frozen=True)
class Match:
    token: str
    type: str
    url: str
    source: str


def parse_report(raw: bytes) -> list[Match]:
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise BadReport("the body is not JSON") from None
    if not isinstance(body, list) or not body:
        raise BadReport("the body must be a non-empty JSON array of matches")
    if len(body) > MAX_MATCHES:
        raise BadReport(f"at most {MAX_MATCHES} matches a report")
    matches = []
    for entry in body:
        if not isinstance(entry, dict) or not isinstance(entry.get("token"), str) \
                or not isinstance(entry.get("type"), str) or len(entry["token"]) > MAX_TOKEN_CHARS:
            raise BadReport("each match needs a string token and type")
        url, source = entry.get("url"), entry.get("source")
        matches.append(Match(entry["token"], entry["type"][:200], url[:MAX_URL_STORED] if isinstance(url, str) else "",
                             source[:50] if isinstance(source, str) else ""))
    return matches


def token_hash(token: str) -> str:
    """GitHub's feedback names a token by the SHA-256 hex of its raw form (for our keys: the stored hash)."""
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


def handle_report(matches: list[Match]) -> list[dict]:
    """Revoke every live key the report names, once; GitHub's feedback: one entry per distinct token, with its
    SHA-256, its type and whether it is one of ours (`true_positive`: a key we issued, live or not).

    Idempotent: a key already revoked (by an earlier delivery of the same report, or another report) is left as
    it is, with no second audit record or event. Only well-formed `sk-ony-` tokens are looked up (BatchGetItem of
    their hashes); nothing else reads a key."""
    distinct: dict[tuple[str, str], Match] = {}
    for match in matches:
        distinct.setdefault((match.token, match.type), match)
    ours = {keys.hash_key(m.token): m for m in distinct.values() if keys.is_well_formed(m.token)}
    found = _records(list(ours))
    for key_hash, record in found.items():
        _revoke(record, ours[key_hash])
    return [{"token_hash": token_hash(m.token), "token_type": m.type,
             "label": TRUE_POSITIVE if keys.is_well_formed(m.token) and keys.hash_key(m.token) in found
             else FALSE_POSITIVE} for m in distinct.values()]


def _records(hashes: list[str]) -> dict[str, ApiKey]:
    found: dict[str, ApiKey] = {}
    for start in range(0, len(hashes), 100):
        for record in ApiKey.batch_get(hashes[start:start + 100], consistent_read=True):
            found[record.key_hash] = record
    return found


def _revoke(record: ApiKey, match: Match) -> None:
    """Revoke the secret the report names, if it still works: the key's current secret revokes the key (status
    `leaked`; its old secrets still in their grace end too); an old secret in its grace is revoked alone (the key's
    new secret, made before the leak was found, goes on). Then the audit record (with the URL) and `Key Leaked`."""
    now = clock.now_iso()
    leak = [ApiKey.leaked_at.set(now), ApiKey.leak_source.set(match.source or "unknown")]
    leak.append(ApiKey.leak_url.set(match.url) if match.url else ApiKey.leak_url.remove())
    if record.status == api_keys.ACTIVE:
        which = "current"
        condition = (ApiKey.status == api_keys.ACTIVE) & ApiKey.leaked_at.does_not_exist()
        actions = [ApiKey.status.set(api_keys.LEAKED), *leak]
        also = api_keys.end_graces(api_keys.records_of_key(record.key_id), now)
    elif record.status == api_keys.ROTATED and not record.leaked_at and (record.grace_until or "") > now:
        which = "previous"
        condition = (ApiKey.status == api_keys.ROTATED) & ApiKey.leaked_at.does_not_exist()
        actions = [*leak, ApiKey.grace_until.set(now)]
        also = []
    else:
        return  # deleted, already leaked, or an old secret past its grace: nothing left to revoke
    try:
        account = Account.get(record.account_id, consistent_read=True)
    except Account.DoesNotExist:
        account = None
    details = {"url": match.url, "source": match.source, "type": match.type, "display": record.display,
               "secret": which}
    companions = None
    if account is not None:
        actor = audit.Actor(Principal(OPERATOR), sub=REPORTER)
        companions = lambda item: audit.entries(actor, audit.KEY_LEAKED, account, key_id=item.key_id,  # noqa: E731
                                                details=details)
    try:
        writes.update(record, actions, condition, companions, also=also)
    except writes.ConditionFailed:
        return  # revoked meanwhile (the same report delivered twice at once): its event is the other one's
    logger.warning("key revoked: reported leaked", extra={"key_id": record.key_id, "secret": which})
    events.emit(events.KEY_LEAKED, events.about_key(record, leaked_at=now, url=match.url or None,
                                                    source=match.source or None, secret=which))
