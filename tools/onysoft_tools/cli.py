"""`onysoft`: the operator's command line (DESIGN.md, "CLI contract": names, flags and JSON fields are a contract).

    onysoft dev ...                                   the local gateway (onysoft_tools.dev)
    onysoft accounts create|show|topup|update|list    balances
    onysoft keys create|update|list|rotate|delete     API keys (a plaintext is shown once: at creation, rotation)
    onysoft usage --account ID                        usage records, newest first
    onysoft catalog set|list                          models and their USD prices per million tokens
    onysoft fx set|show                               the USD→TRY rate
    onysoft sweep [--older-than 15m]                  close stale holds now (what the scheduled sweeper does)
    onysoft sweep quarantined [--retry]               holds the sweeper could not close, set aside (issue 23)
    onysoft rollups quarantined | replay [--id ID]    usage stream records the rollup set aside; count them now
    onysoft report margin --from DATE --to DATE       charged, provider cost and margin [--by partner|account|…]
    onysoft statement ACCOUNT_ID --month YYYY-MM      a month's statement [--json|--csv]
    onysoft users create | token                      dashboard sign-ins (the Cognito user pool)
    onysoft events [--follow]                         key and balance events (locally: <state dir>/events.jsonl)
    onysoft backfill                                  issue 23's index attributes on items written before it

Every command is parse → operation → render: the commands (onysoft_tools.commands, one module per concept)
call onysoft.operations as the operator (audited with actor_sub cli:<user>@<host>) and print its views.
Every command takes --state-dir (a local gateway's dev.env), or --endpoint-url/--region and the
ONYSOFT_TABLE_* variables for AWS. With --json a command prints exactly one JSON object on stdout.
Bad input: `onysoft: error: …` on stderr and exit code 2. DynamoDB unreachable or failing: exit code 1.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence

from botocore import exceptions as bexc
from pynamodb.exceptions import PynamoDBException

from onysoft import config
from onysoft.accounts import AccountError
from onysoft.api_keys import KeyNotFound
from onysoft.catalog import CatalogError
from onysoft.errors import GatewayError
from onysoft.money import MoneyError
from onysoft_tools import settings
from onysoft_tools.commands import (
    accounts,
    backfill,
    catalog,
    events,
    keys,
    reports,
    rollups,
    statements,
    sweep,
    usage,
    users,
)
from onysoft_tools.commands.output import EXIT_FAILURE, EXIT_OK, EXIT_USAGE, PROG, UsageError

# Each module adds its commands to the parser; a new command group is one more entry here.
REGISTRARS = (accounts.register, keys.register, usage.register, catalog.register, sweep.register, users.register,
              catalog.register_fx, reports.register, statements.register, events.register, rollups.register,
              backfill.register)


# ---------------------------------------------------------------------------------------------- parser


def _connection_options(parser: argparse.ArgumentParser, *, defaults: bool, endpoint: bool = True) -> None:
    """--state-dir/--endpoint-url/--region (and --json). On the top-level parser they have real defaults;
    on each subcommand they are SUPPRESSed so a value given before the subcommand is not overwritten."""
    suppress = argparse.SUPPRESS
    group = parser.add_argument_group("connection")
    group.add_argument("--state-dir", metavar="DIR", default=None if defaults else suppress,
                       help="a local gateway's state dir, whose dev.env says where DynamoDB is "
                            "(env ONYSOFT_STATE_DIR, default .onysoft)")
    if endpoint:
        group.add_argument("--endpoint-url", metavar="URL", default=None if defaults else suppress,
                           help="DynamoDB endpoint (ignores dev.env); without it and without dev.env: AWS, "
                                "table names from ONYSOFT_TABLE_*")
        group.add_argument("--region", metavar="REGION", default=None if defaults else suppress,
                           help="AWS region (default: AWS_REGION / AWS_DEFAULT_REGION)")


def _common(defaults: bool) -> argparse.ArgumentParser:
    parent = argparse.ArgumentParser(add_help=False)
    parent.add_argument("--json", action="store_true", default=False if defaults else argparse.SUPPRESS,
                        help="print one JSON object on stdout (and nothing else)")
    _connection_options(parent, defaults=defaults)
    return parent


def build_parser() -> argparse.ArgumentParser:
    common = _common(defaults=False)
    parser = argparse.ArgumentParser(
        prog=PROG, parents=[_common(defaults=True)],
        description="Onysoft AI Gateway: accounts, keys, usage, catalog and the local gateway.",
        epilog="Run `onysoft COMMAND --help` for a command's options.",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def leaf(group, name: str, handler: Callable[[argparse.Namespace], int], help_text: str):
        sub = group.add_parser(name, parents=[common], help=help_text, description=help_text)
        sub.set_defaults(handler=handler)
        return sub

    commands.add_parser(
        "dev", add_help=False, help="run the gateway locally (moto server, the template's API on :3000)",
        description="Run the gateway locally. `onysoft dev --help` lists its options.",
    )
    for register in REGISTRARS:
        register(commands, leaf)
    return parser


# ---------------------------------------------------------------------------------------------- running


def _run_dev(args: argparse.Namespace, extra: list[str]) -> int:
    """`onysoft dev`: the local gateway's own options come from onysoft_tools.dev."""
    # Lazy on purpose: dev pulls in moto, uvicorn and the Lambda handlers, which no other command needs.
    from onysoft_tools import dev

    parser = argparse.ArgumentParser(prog=f"{PROG} dev", conflict_handler="resolve",
                                     description="Run the gateway locally (see DESIGN.md, `onysoft dev`).")
    parser.add_argument("--state-dir", metavar="DIR", default=args.state_dir,
                        help="where dev.env and the local state live (env ONYSOFT_STATE_DIR, default .onysoft)")
    dev.add_arguments(parser)
    return dev.run(parser.parse_args(extra))


def _dynamodb_message(exc: BaseException) -> str:
    """One line that says what went wrong with DynamoDB and what to check; never a traceback."""
    cause = getattr(exc, "cause", None) or exc
    endpoint = os.environ.get("AWS_ENDPOINT_URL_DYNAMODB") or os.environ.get("AWS_ENDPOINT_URL")
    where = f"DynamoDB at {endpoint}" if endpoint else f"DynamoDB in {config.region()}"
    code = getattr(exc, "cause_response_code", None)
    if not code and isinstance(cause, bexc.ClientError):
        code = cause.response.get("Error", {}).get("Code")
    if isinstance(cause, bexc.EndpointConnectionError | bexc.ConnectionClosedError | bexc.ConnectTimeoutError
                  | bexc.ReadTimeoutError):
        hint = " (is `onysoft dev` running?)" if endpoint else ""
        return f"cannot reach {where}{hint}: {cause}"
    if isinstance(cause, bexc.NoCredentialsError | bexc.PartialCredentialsError):
        return ("no AWS credentials: configure them for AWS, or start the local gateway (`onysoft dev`) "
                "and pass its --state-dir")
    if isinstance(cause, bexc.NoRegionError):
        return "no AWS region: pass --region or set AWS_REGION"
    if code == "ResourceNotFoundException":
        return (f"a table is missing in {where}: check ONYSOFT_TABLE_* (or start the local gateway, "
                f"`onysoft dev`): {cause}")
    if code in ("UnrecognizedClientException", "InvalidSignatureException", "ExpiredTokenException",
                "AccessDeniedException"):
        return f"{where} refused the credentials: {cause}"
    return f"{where} failed: {cause}"


def _run_command(args: argparse.Namespace) -> int:
    try:
        settings.apply(state_dir_arg=args.state_dir, endpoint_url=args.endpoint_url, region=args.region)
    except (OSError, UnicodeDecodeError) as exc:
        print(f"{PROG}: error: cannot read the state dir's dev.env: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    try:
        return args.handler(args)
    except GatewayError as exc:  # an operation's answer: 4xx is the caller's input (or reach), 5xx is ours
        print(f"{PROG}: error: {exc.message}", file=sys.stderr)
        return EXIT_USAGE if exc.status < 500 else EXIT_FAILURE
    except (UsageError, AccountError, KeyNotFound, CatalogError, MoneyError) as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except (PynamoDBException, bexc.BotoCoreError, bexc.ClientError) as exc:
        print(f"{PROG}: error: {_dynamodb_message(exc)}", file=sys.stderr)
        return EXIT_FAILURE


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args, extra = parser.parse_known_args(list(sys.argv[1:] if argv is None else argv))
        if args.command != "dev" and extra:
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
    except SystemExit as exc:  # argparse: --help (0) or a usage error (2)
        return exc.code if isinstance(exc.code, int) else (EXIT_OK if exc.code is None else EXIT_USAGE)
    try:
        if args.command == "dev":
            try:
                return _run_dev(args, extra)
            except SystemExit as exc:
                return exc.code if isinstance(exc.code, int) else (EXIT_OK if exc.code is None else EXIT_USAGE)
        return _run_command(args)
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `onysoft keys list … | head`
        try:
            sys.stdout = open(os.devnull, "w")  # keep the exit-time flush quiet
        except OSError:
            pass
        return EXIT_FAILURE


if __name__ == "__main__":
    sys.exit(main())
