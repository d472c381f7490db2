"""moto server, one request at a time: `python -m onysoft_tools.serial_moto -p PORT`. What `onysoft dev` starts.

Stock `python -m moto.server` runs every request on its own thread, and moto's DynamoDB backend has no lock.
Under concurrent TransactWriteItems it (1) fails with "dictionary changed size during iteration" while it
deep-copies a table for its rollback (HTTP 500), and (2) rolls a cancelled transaction back by restoring
whole-table copies taken when it started, erasing the writes of transactions that committed in between
(seen: 12 of 50 concurrent requests forwarded on a key limited to 10 a minute). Real DynamoDB serializes
transactions on an item; one lock around moto's WSGI app gives the same guarantee. Connections are still
accepted on threads, so a slow client never blocks the others for longer than one request's handling.
"""

from __future__ import annotations

import argparse
import threading

from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app
from werkzeug.serving import run_simple


def serialized_app():
    app = DomainDispatcherApplication(create_backend_app)
    lock = threading.Lock()

    def serial(environ, start_response):
        with lock:  # the whole request, the body included, inside the lock
            result = app(environ, start_response)
            try:
                return [b"".join(result)]
            finally:
                close = getattr(result, "close", None)
                if close:
                    close()

    return serial


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("-H", "--host", default="127.0.0.1")
    parser.add_argument("-p", "--port", type=int, required=True)
    args = parser.parse_args(argv)
    run_simple(args.host, args.port, serialized_app(), threaded=True)


if __name__ == "__main__":
    main()
