"""`onysoft dev`: the whole gateway on a developer's machine, built from template.yaml.

What it runs, in this order:

1. a DynamoDB-compatible server: moto server in its own process (or `--dynamodb-endpoint`);
2. the template's tables (template.yaml is the only schema), with the state moto server itself restored;
3. on the first run only, a seed: catalog, a USD→TRY rate, one demo account and key per key type;
4. the dashboard's user pool and app client from template.yaml on moto's cognito-idp, with demo sign-ins
   (onysoft_tools.local.cognito), and `<state dir>/dev.env`, the connection settings the CLI reads;
5. `<state dir>/events.jsonl`, where key and balance events go (onysoft.events; `onysoft events` shows them);
6. an HTTP server (uvicorn) with an ASGI app that behaves like the deployed API Gateway stage: the
   template's routes, its Lambda REQUEST authorizer (the real `functions/authorizer` handler on a real
   REQUEST event, its answer cached for ReauthorizeEvery seconds), its gateway responses, and the real
   proxy ASGI app (`functions/proxy/app.py`) called the way the Lambda Web Adapter calls it.

State across restarts: moto server keeps everything in memory; started with `--state-dir`, it journals
every DynamoDB write to `<state dir>/journal.log` before answering it, and loads `<state dir>/snapshot.jsonl`
plus the journal at start (onysoft_tools.local.journal): `kill -9` loses no acknowledged write, and no request
pays for a scan of the tables. The demo keys' plaintext is kept in
`<state dir>/demo-keys.json` (mode 0600) so a restart can print them again: a local development
convenience only. Tables only ever hold a key's SHA-256, here as in AWS.

No process is left behind: moto runs in its own process group, dies with this process (Linux
PR_SET_PDEATHSIG), and is stopped (then killed if it lingers) on Ctrl-C, SIGTERM, a crash or exit.

The parts live in onysoft_tools.local, one concept a module: moto_process (the moto server process and the
environment pointing at it), state (tables, first run, atomic writes), seeding (the demo seed and its keys
file), lambdas (loading the template's functions), api_gateway (the API Gateway stage emulator), cognito
(the user pool), journal (durability). This module runs them in order and prints the banner.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import logging
import os
import signal
import socket
import sys
import time
from pathlib import Path

from onysoft import events
from onysoft_tools import iam_record, settings, template
from onysoft_tools.local import cognito as local_cognito
from onysoft_tools.local import moto_process, seeding
from onysoft_tools.local import state as local_state
from onysoft_tools.local.api_gateway import LocalApiGateway
from onysoft_tools.local.moto_process import MOTO_LOG_FILE, REGION, MotoServer
from onysoft_tools.local.seeding import DEMO_KEYS_FILE, DemoKey

logger = logging.getLogger("onysoft.dev")

REQUEST_LOG_FILE = "requests.log"  # per-request logs without --verbose


# ---------------------------------------------------------------------------------------------- arguments


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=3000, help="port to listen on (default 3000)")
    parser.add_argument("--no-seed", action="store_true",
                        help="do not seed the catalog, FX rate and demo accounts/keys on a first run")
    parser.add_argument("--dynamodb-endpoint", metavar="URL", default=None,
                        help="use this DynamoDB-compatible server instead of moto server "
                             "(its data is then its own: nothing is saved to the state dir; "
                             "moto server still runs the local user pool)")
    parser.add_argument("--verbose", action="store_true",
                        help="log every request on the terminal (default: to <state dir>/requests.log)")


# ---------------------------------------------------------------------------------------------- run


# Ctrl-C stops everything within 5 s (issue 21), whatever is open: requests in flight get GRACEFUL_SECONDS to end
# (then uvicorn cancels them: a stream's relay still settles, shielded from the cancellation, charging its hold
# when the provider's usage has not come: onysoft.forwarding stops reading within 0.25 s once the app is stopping),
# the rollup poller and the schedules up to 0.5 s to end a run (what the poller has not read stays on the stream,
# and the snapshot keeps it),
# and moto MOTO_STOP_SECONDS to compact (it abandons a compaction past serial_moto.STOP_COMPACTION_SECONDS and
# keeps the journal whole; killed past this, it loses nothing acknowledged either: every write is journaled).
GRACEFUL_SECONDS = 1.0
KEEP_ALIVE_SECONDS = 75  # how long the front server keeps an idle client connection (nginx's default)
MOTO_STOP_SECONDS = 2.0


class _StopClock:
    """When the stop began (the first signal) and how long each of its steps took, for the last line printed."""

    def __init__(self) -> None:
        self.started: float | None = None
        self.steps: list[tuple[str, float]] = []

    def begin(self) -> None:
        if self.started is None:
            self.started = time.monotonic()

    def mark(self, step: str) -> None:
        self.begin()
        self.steps.append((step, time.monotonic()))
        logger.info("stop: %s after %.2f s", step, self.steps[-1][1] - self.started)

    def summary(self) -> str:
        if self.started is None or not self.steps:
            return ""
        return f" in {self.steps[-1][1] - self.started:.1f} s"


class _CancelledAtStop(logging.Filter):
    """uvicorn logs a request it cancels at the end of its graceful period as an 'Exception in ASGI application':
    at a stop that is the plan (the stream was settled), not an error worth a traceback on the terminal."""

    def __init__(self, server) -> None:
        super().__init__()
        self.server = server

    def filter(self, record: logging.LogRecord) -> bool:
        import asyncio

        cancelled = record.exc_info is not None and isinstance(record.exc_info[1], asyncio.CancelledError)
        return not (cancelled and self.server.should_exit)


class _Stop(Exception):  # noqa: N818 - a signal, not an error
    """SIGTERM/SIGHUP: leave the serve loop and clean up, like Ctrl-C."""


def _raise_stop(signum, frame) -> None:
    raise _Stop(signal.Signals(signum).name)


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    # Accepted connections inherit this: no ~40 ms wait for the client's delayed ACK on small answers.
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    sock.set_inheritable(True)
    return sock


def _configure_logging(state: Path, verbose: bool) -> logging.StreamHandler | None:
    """The terminal gets warnings and errors; every per-request line (the gateway's, uvicorn's access log,
    the functions' own loggers) goes to <state dir>/requests.log, or to the terminal with --verbose.
    Returns the request file's handler (None with --verbose). It is a StreamHandler on a file we keep open:
    uvicorn's logging setup closes every FileHandler that exists when it starts."""
    formatter = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S")
    terminal = logging.StreamHandler(sys.stderr)
    terminal.setFormatter(formatter)
    request_file = None
    if not verbose:
        terminal.setLevel(logging.WARNING)
        stream = open(state / REQUEST_LOG_FILE, "a", encoding="utf-8", buffering=1)  # noqa: SIM115 - process-long
        request_file = logging.StreamHandler(stream)
        request_file.setFormatter(formatter)
    for name in ("onysoft",):
        log = logging.getLogger(name)
        for handler in list(log.handlers):
            log.removeHandler(handler)
        log.addHandler(terminal)
        if request_file is not None:
            log.addHandler(request_file)
        log.setLevel(logging.INFO)
        log.propagate = False
    return request_file


def _uvicorn_log_config(request_file: logging.StreamHandler | None) -> dict | None:
    """uvicorn's default logging (None), or the same with its access log in the request file."""
    if request_file is None:
        return None
    import copy

    from uvicorn.config import LOGGING_CONFIG

    config = copy.deepcopy(LOGGING_CONFIG)
    config["handlers"]["access"] = {"()": lambda: logging.StreamHandler(request_file.stream), "formatter": "access"}
    config["formatters"]["access"]["use_colors"] = False
    return config


def _functions_log_to(request_file: logging.StreamHandler | None) -> None:
    """The functions' Powertools loggers print each invocation's lines to stdout: to the request file instead."""
    if request_file is None:
        return
    service = os.environ.get("POWERTOOLS_SERVICE_NAME", "")
    for handler in logging.getLogger(service).handlers if service else []:
        if isinstance(handler, logging.StreamHandler) and not isinstance(handler, logging.FileHandler):
            handler.setStream(request_file.stream)


def _dashboard_banner(base_url: str, sign_ins: list[dict[str, str]]) -> str:
    lines = [f"Dashboard:   {base_url}/dashboard/   (its API: {base_url}/dashboard/…, Swagger UI: …/dashboard/docs)",
             "Demo sign-ins (the local user pool; more: onysoft users create --principal … --email … --password …):"]
    for entry in sign_ins:
        lines.append(f"  {entry['principal']:<28} {entry['email']:<28} {entry['password']}")
    lines.append("  a token for curl: onysoft token --email EMAIL --password PASSWORD [--mfa-code CODE]")
    lines.append("  the operator's first sign-in sets up two-step sign-in (an authenticator app, TOTP): required for "
                 "the operator, offered to everyone")
    return "\n".join(lines)


def _banner(base_url: str, state: Path, endpoint: str, demo: list[DemoKey], seeded: bool, persisted: bool,
            dashboard: str = "") -> str:
    lines = [
        "",
        "Onysoft AI Gateway (local) — the template's routes, authorizer and gateway responses",
        f"  API:         {base_url}/v1   (OpenAI SDKs: base_url={base_url}/v1)",
        f"  state dir:   {state}" + ("" if persisted else "   (tables live in the given DynamoDB endpoint)"),
        f"  DynamoDB:    {endpoint}",
        f"  CLI:         onysoft --state-dir {state} accounts|keys|usage|catalog|fx …",
        f"  events:      {state / events.FILE_NAME}   (onysoft events --follow)",
        "",
    ]
    if demo:
        lines.append("Demo keys" + (" (new)" if seeded else "") + f" — local only, kept in {state / DEMO_KEYS_FILE}:")
        for entry in demo:
            status = "" if entry.valid else "   [no longer valid]"
            lines.append(f"  {entry.type:<17} {entry.currency}  {entry.key}{status}")
            if entry.valid:
                lines.append(f'    curl -H "Authorization: Bearer {entry.key}" {base_url}/v1/key')
        example = next((e for e in demo if e.valid), None)
        if example:
            lines += ["", "Clients read the key from the environment:",
                      f"  export ONYSOFT_API_KEY={example.key}"]
    else:
        lines.append("No demo keys (create one: onysoft accounts create --kind user; onysoft keys create --account …)")
    if dashboard:
        lines += ["", dashboard]
    lines += ["", "Ctrl-C to stop.", ""]
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    state = settings.state_dir(getattr(args, "state_dir", None)).resolve()
    host, port = getattr(args, "host", "127.0.0.1"), int(getattr(args, "port", 3000))
    external = getattr(args, "dynamodb_endpoint", None)
    iam_record.install()  # only when ONYSOFT_IAM_RECORD is set (the IAM conformance check)
    state.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(OSError):
        os.chmod(state, 0o700)
    request_file = _configure_logging(state, bool(getattr(args, "verbose", False)))
    try:
        sock = _bind(host, port)
    except OSError as exc:
        print(f"onysoft dev: cannot listen on {host}:{port}: {exc.strerror or exc}", file=sys.stderr)
        return 1

    from onysoft_tools.local import journal, legacy_state

    stopping = _StopClock()

    moto = MotoServer(state / MOTO_LOG_FILE, state_dir=None if external else state,
                      verbose=bool(getattr(args, "verbose", False)))
    had_state = journal.has_state(state)  # before moto starts (and writes its journal)
    atexit.register(moto.stop)
    previous = {sig: signal.signal(sig, _raise_stop) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        os.environ.update(local_cognito.MOTO_ENV)  # the same user pool ids after every restart
        moto_endpoint = moto.start()  # the user pool lives there even when DynamoDB is elsewhere
        endpoint = external or moto_endpoint
        env = moto_process.connection_env(endpoint, host, port)
        # Key and balance events go to a file here (onysoft.events), the gateway's and the CLI's alike (dev.env).
        env[events.FILE_ENV] = str(state / events.FILE_NAME)
        os.environ.update(env)
        os.environ.pop("AWS_PROFILE", None)
        os.environ.pop("AWS_SESSION_TOKEN", None)
        os.environ.setdefault("POWERTOOLS_SERVICE_NAME", "onysoft-gateway")
        from onysoft.models import bind_tables

        bind_tables()  # before any handler module is imported

        tpl = template.load_template()
        client, names = local_state.create_tables(endpoint, tpl, env)
        demo_path = state / DEMO_KEYS_FILE
        first_run = local_state.first_run(client, names, state, external=bool(external), had_state=had_state,
                                          seeded_marker=demo_path)
        pool = local_cognito.create_pool(moto_endpoint, REGION, tpl)  # template.yaml's pool, moto's cognito-idp
        env.update(pool.env())
        os.environ.update(pool.env())
        settings.write_env_file(state / settings.ENV_FILE_NAME, env)

        seeded = False
        if first_run and not getattr(args, "no_seed", False):
            demo = seeding.seed()  # every write journaled before it was acknowledged: on file before the keys file
            seeded = True
            seeding.write_demo_keys(demo_path, demo)
        else:
            demo = seeding.read_demo_keys(demo_path)
            seeding.check_demo_keys(demo)
        sign_ins = local_cognito.seed_users(pool, state, seeding.demo_principals(demo))

        gateway = LocalApiGateway(tpl, state_dir=state)
        from onysoft_tools.local.rollup_poller import RollupPoller  # RollupFunction's stream, as Lambda reads it

        poller = RollupPoller(names["UsageTable"], endpoint=endpoint).start()
        from onysoft_tools.local.schedules import Schedules  # KeyExpiryFunction, as EventBridge Scheduler runs it

        schedules = Schedules(tpl).start()
        _functions_log_to(request_file)
        import uvicorn

        # http="h11": this server stands where API Gateway stands, in front of clients' raw HTTP. h11 reads what
        # a front door must answer with an OpenAI error (an obsolete folded header, odd bytes in a key), where
        # httptools, which the proxy runs behind the adapter on Lambda (well-formed requests only), answers a
        # plain-text 400 (tests/integration/test_dev_gateway.py, test_fuzz.py).
        # timeout_keep_alive: an idle connection stays open longer than clients keep one (httpx, and so the OpenAI
        # SDK: 5 s; uvicorn's own default is also 5 s, so a client reusing a connection just as the server closed
        # it got a broken request: tests/integration/test_concurrency.py did, once). AWS's front doors keep theirs
        # open for about a minute too.
        config = uvicorn.Config(gateway, log_level="info", access_log=True, lifespan="on", http="h11",
                                timeout_keep_alive=KEEP_ALIVE_SECONDS, timeout_graceful_shutdown=GRACEFUL_SECONDS,
                                log_config=_uvicorn_log_config(request_file))

        class Server(uvicorn.Server):
            def handle_exit(self, sig, frame) -> None:  # Ctrl-C or SIGTERM: the stop's clock starts
                stopping.begin()
                super().handle_exit(sig, frame)

        server = Server(config)
        logging.getLogger("uvicorn.error").addFilter(_CancelledAtStop(server))
        base_url = env["ONYSOFT_GATEWAY_URL"]
        print(_banner(base_url, state, endpoint, demo, seeded, not external,
                      dashboard=_dashboard_banner(base_url, sign_ins)), flush=True)
        try:
            server.run(sockets=[sock])
        except (KeyboardInterrupt, _Stop):
            pass
        finally:
            stopping.mark("requests ended")
            schedules.stop(timeout=0.5)
            poller.stop(wait=0.5)
            stopping.mark("rollup poller and schedules stopped")
        return 0
    except (KeyboardInterrupt, _Stop):
        return 130
    except (journal.StateError, legacy_state.LegacyStateError) as exc:
        print(f"onysoft dev: {exc}", file=sys.stderr, flush=True)
        return 1
    except Exception as exc:
        logger.error("onysoft dev failed: %s", exc)
        raise
    finally:
        with contextlib.suppress(Exception):
            sock.close()
        moto.stop(grace=MOTO_STOP_SECONDS)  # SIGTERM: moto compacts its journal into the snapshot (bounded)
        stopping.mark("moto server stopped")
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        print(f"onysoft dev stopped{stopping.summary()}.", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    """`python -m onysoft_tools.dev`: the same as `onysoft dev`."""
    parser = argparse.ArgumentParser(prog="onysoft dev", description="Run the gateway locally.")
    parser.add_argument("--state-dir", default=None, help="where dev.env and the local state live (.onysoft)")
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
