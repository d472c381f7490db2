"""The one door for admin operations: accounts, keys, top-ups, catalog, FX, usage and the audit log.

The dashboard API (functions/dashboard/app.py) and the `onysoft` CLI (tools/onysoft_tools) both call these
operations and render their views (onysoft.operations.views); `GET /v1/key` renders the same key view.
Every operation takes an actor (onysoft.audit.Actor): a dashboard principal, or the CLI acting as the
operator (`actor_sub` = `cli:<user>@<host>`, see access.cli_operator). What an actor may do is decided
here and nowhere else:

- 404 for an account or key the actor does not see, with the very answer an unknown id gets, so no
  tenant can tell another tenant's ids from ids that were never issued;
- 403 for an action on something the actor sees but may not do (a top-up by anyone but the operator,
  a markup change on a project by its org, an account created by a user, the catalog and FX rates);
- 400 for bad input. All three are onysoft.errors.GatewayError; the CLI maps 4xx to exit code 2.

This package imports nothing on purpose: `GET /v1/key` (the proxy) imports `views` alone, and pays for
no other operation at cold start.
"""
