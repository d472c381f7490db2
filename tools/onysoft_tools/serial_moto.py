"""moto server, one request at a time: `python -m onysoft_tools.serial_moto -p PORT [--state-dir DIR]`.
What `onysoft dev` starts.

Stock `python -m moto.server` runs every request on its own thread, and moto's DynamoDB backend has no lock.
Under concurrent TransactWriteItems it (1) fails with "dictionary changed size during iteration" while it
deep-copies a table for its rollback (HTTP 500), and (2) rolls a cancelled transaction back by restoring
whole-table copies taken when it started, erasing the writes of transactions that committed in between
(seen: 12 of 50 concurrent requests forwarded on a key limited to 10 a minute). Real DynamoDB serializes
transactions on an item; one lock around moto's WSGI app gives the same guarantee. Connections are still
accepted on threads, so a slow client never blocks the others for longer than one request's handling.

More things make it behave like a database rather than a fixture:
- TransactWriteItems costs O(items touched), not O(items stored): `onysoft_tools.local.moto_transactions`
  (which the lock above makes sound).
- Per-request work moto repeats for nothing (listing its own package, re-parsing the same update expressions)
  is done once: `onysoft_tools.local.moto_hot_path`.
- The objects moto creates per request (item copies, stream records, shard iterators) are not kept for life in
  moto's instance lists: `onysoft_tools.local.moto_untracked`.
- With `--state-dir`, every DynamoDB write is journaled before its answer goes back, and the state is loaded
  from the snapshot and journal at start and compacted at SIGTERM (`onysoft_tools.local.journal`).
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
import time
from pathlib import Path

from werkzeug.wsgi import get_input_stream

from onysoft_tools.local import journal as journal_module
from onysoft_tools.local import memory_probe, moto_transactions

logger = logging.getLogger("onysoft.serial_moto")

# The longest a clean stop spends compacting (onysoft dev's Ctrl-C budget is 5 s in all): past it, the journal is
# left whole for the next start to replay.
STOP_COMPACTION_SECONDS = 1.5

JOURNAL_FAILED = (b'{"__type":"com.amazonaws.dynamodb.v20120810#InternalServerError",'
                  b'"message":"onysoft dev: the local journal could not be written; restart onysoft dev"}')


def serialized_app(state: journal_module.DurableState | None = None, moto_app=None, log_requests: bool = False):
    """moto's WSGI app behind one lock; with `state`, a DynamoDB write is journaled before it is answered."""
    import io

    if moto_app is None:
        from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app

        moto_app = DomainDispatcherApplication(create_backend_app)
    lock = threading.Lock()

    def serial(environ, start_response):
        target = environ.get("HTTP_X_AMZ_TARGET", "")
        journaled = state is not None and journal_module.journaled_target(target)
        body = b""
        if journaled:  # the body is needed twice: for moto and for the journal
            body = get_input_stream(environ).read()
            environ["wsgi.input"] = io.BytesIO(body)
            environ["CONTENT_LENGTH"] = str(len(body))
            environ.pop("HTTP_TRANSFER_ENCODING", None)
            environ["wsgi.input_terminated"] = False
        with lock:  # the whole request, the body included, inside the lock
            if memory_probe.wants(environ):  # a diagnostic, off unless ONYSOFT_DEV_MEMORY_PROBE=1
                status, headers, out = memory_probe.answer(environ)
            elif journaled and state.failed:
                status, headers, out = "500 INTERNAL SERVER ERROR", [("Content-Type", "application/x-amz-json-1.0")], \
                    JOURNAL_FAILED
            else:
                status, headers, out = journal_module.call_app(moto_app, environ)
            if journaled and not state.failed and status.startswith("2"):
                try:
                    state.record(journal_module.durable_entry(environ, body))
                except OSError as exc:
                    # moto applied the write in memory but it is not on file: do not acknowledge it, and take
                    # no further write (memory and file would disagree from here on).
                    state.failed = f"{type(exc).__name__}: {exc}"
                    logger.error("journal write failed (%s): refusing writes until restart", state.failed)
                    status, headers, out = "500 INTERNAL SERVER ERROR", \
                        [("Content-Type", "application/x-amz-json-1.0")], JOURNAL_FAILED
                else:
                    if state.wants_compaction():
                        done = state.compact()
                        logger.info("journal compacted into the snapshot: %d items, %d unread stream records (%d "
                                    "expired ones deleted) in %.2f s", done["items"], done["stream_records"],
                                    done["expired"], done["seconds"])
        if log_requests:
            logger.info("%s %s %s -> %s", environ.get("REQUEST_METHOD"), environ.get("PATH_INFO"), target, status)
        start_response(status, headers)
        return [out]

    serial.lock = lock  # what a clean stop takes before it compacts
    return serial


class _Stop(SystemExit):  # noqa: N818 - a signal, not an error
    """Raised by the stop signals in the main thread, which runs waitress's event loop. A SystemExit: that loop
    hands any other exception raised inside a socket's event to the channel's handle_error and carries on, so a
    stop that landed while a request was being read was swallowed and moto outlived its parent (5 stops in 15 under
    traffic); SystemExit it re-raises, and its run() returns on it."""


def _raise_stop(signum, frame) -> None:
    raise _Stop(signal.Signals(signum).name)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("-H", "--host", default="127.0.0.1")
    parser.add_argument("-p", "--port", type=int, required=True)
    parser.add_argument("--state-dir", default=None,
                        help="keep the state here: journal.log + snapshot.jsonl (default: memory only)")
    parser.add_argument("--verbose", action="store_true", help="log every request")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        stream=sys.stderr)
    try:
        moto_transactions.install()
    except moto_transactions.UnsupportedMotoVersion as exc:
        print(exc, file=sys.stderr, flush=True)
        return 3
    from onysoft_tools.local import moto_streams

    moto_streams.install()  # the usage-rollup poller's GetRecords, without moto's slow serializer
    from onysoft_tools.local import moto_hot_path

    moto_hot_path.install()  # per-request work moto repeats for nothing, done once
    from onysoft_tools.local import moto_untracked

    moto_untracked.install()  # moto's per-request objects freed when nothing refers to them (not kept for life)
    from onysoft_tools.local import moto_cognito

    moto_cognito.install()  # RevokeToken for the dashboard's sign-out (moto 5.2 has none)

    from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app
    from waitress import create_server

    moto_app = DomainDispatcherApplication(create_backend_app)
    state = None
    if args.state_dir:
        state = journal_module.DurableState(
            Path(args.state_dir), moto_app, fsync=os.environ.get("ONYSOFT_DEV_FSYNC", "") == "1",
            max_bytes=int(os.environ.get("ONYSOFT_DEV_JOURNAL_MAX_BYTES") or journal_module.DEFAULT_MAX_BYTES),
        )
        try:
            state.lock()
            state.load()
        except journal_module.StateError as exc:
            print(f"onysoft dev: {exc}", file=sys.stderr, flush=True)
            return 3
        logger.info("state loaded from %s: %s", args.state_dir, state.stats)
    app = serialized_app(state, moto_app, log_requests=args.verbose)
    # waitress, not werkzeug's development server: werkzeug 3 answers every request with `Connection: close`, so
    # each DynamoDB call here paid a new TCP connection that DynamoDB (HTTP/1.1 keep-alive) never charges: about
    # 1 ms of the caller's CPU a call, measured alone, which the proxy's CPU figure carried (docs/BENCHMARKS.md
    # section 6). The threads only wait for the lock: a handful is enough; idle keep-alive connections take none.
    server = create_server(app, host=args.host, port=args.port, threads=16, connection_limit=4096,
                           channel_timeout=300, asyncore_use_poll=True, ident="onysoft-dev-moto")
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, _raise_stop)
    try:
        server.run()
    except (_Stop, KeyboardInterrupt):
        pass
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, signal.SIG_IGN)  # a second signal must not cut the compaction short
        server.close()
        if state is not None:
            with app.lock:  # a request still running on a thread ends first; none starts after
                if not state.failed:
                    # Bounded: a stop is never held up by a large state. Abandoned, the journal stays whole (every
                    # acknowledged write is in it) and the next start replays it.
                    done = state.compact(deadline=time.monotonic() + STOP_COMPACTION_SECONDS)
                    if done["abandoned"]:
                        logger.info("stopped: compaction abandoned after %.2f s (%d items written); the journal is "
                                    "kept whole and the next start replays it", done["seconds"], done["items"])
                    else:
                        logger.info("stopped: %d items and %d unread stream records compacted into %s (%d expired "
                                    "ones deleted) in %.2f s", done["items"], done["stream_records"],
                                    state.snapshot_path, done["expired"], done["seconds"])
                state.failed = "stopped"
                state.close()
                # The snapshot is on disk: skip tearing down moto's heap object by object (seconds with
                # 100,000 items), which would only delay the stop.
                logging.shutdown()
                sys.stderr.flush()
                os._exit(0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
