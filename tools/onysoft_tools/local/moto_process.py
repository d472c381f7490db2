"""moto server in its own process, for `onysoft dev`: a free port, its own process group, dies with its parent
(Linux PR_SET_PDEATHSIG), stopped (then killed if it lingers) on stop(); and the environment that points the
AWS SDK and the functions at it."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from onysoft_tools import template

REGION = "us-east-1"
DUMMY_ACCESS_KEY = "onysoft-dev"  # noqa: S105 - moto accepts any credentials; these are not secrets
DUMMY_SECRET_KEY = "onysoft-dev"  # noqa: S105
MOTO_LOG_FILE = "moto.log"


def _die_with_parent(parent_pid: int):
    """preexec_fn for the moto process: SIGTERM when this process dies, however it dies (Linux)."""

    def preexec() -> None:
        if sys.platform.startswith("linux"):
            try:
                import ctypes

                libc = ctypes.CDLL(None, use_errno=True)
                pr_set_pdeathsig = 1
                libc.prctl(pr_set_pdeathsig, signal.SIGTERM, 0, 0, 0)
            except Exception:  # noqa: BLE001, S110 - best effort; the parent also stops it explicitly
                pass
        if os.getppid() != parent_pid:  # the parent died before prctl took effect
            os._exit(1)

    return preexec


def _free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


class NotAnswering(RuntimeError):
    """moto server did not answer (on that port) within the time given."""


class MotoServer:
    """moto server (serialized: onysoft_tools.serial_moto) in its own process and process group;
    stop() is idempotent and always reaps it."""

    STATE_ERROR = 3  # serial_moto's exit code for a state dir it cannot use (its message is in the log)

    def __init__(self, log_path: Path, state_dir: Path | None = None, verbose: bool = False):
        self.log_path = log_path
        self.state_dir = state_dir  # None: memory only
        self.verbose = verbose
        self.process: subprocess.Popen | None = None
        self.endpoint = ""

    def start(self, timeout: float = 300.0) -> str:
        """Start it and wait until it answers: loading a large state (snapshot + journal) takes a while.
        Tried again on another port when it does not answer: a free port can be taken between the probe
        and moto's bind."""
        from onysoft.retries import Backoff, retry

        return retry(lambda: self._start_once(timeout), Backoff(3, base_seconds=0, cap_seconds=0),
                     retry_if=lambda exc: isinstance(exc, NotAnswering))

    def _start_once(self, timeout: float) -> str:
        port = _free_port()
        command = [sys.executable, "-m", "onysoft_tools.serial_moto", "-H", "127.0.0.1", "-p", str(port)]
        command += ["--state-dir", str(self.state_dir)] if self.state_dir else []
        command += ["--verbose"] if self.verbose else []
        log_start = self.log_path.stat().st_size if self.log_path.exists() else 0
        log = open(self.log_path, "ab")  # noqa: SIM115 - handed to the child, closed below
        try:
            self.process = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL, stdout=log, stderr=log, close_fds=True,
                process_group=0, preexec_fn=_die_with_parent(os.getpid()),  # noqa: PLW1509
            )
        finally:
            log.close()
        self.endpoint = f"http://127.0.0.1:{port}"
        if self._wait_ready(timeout):
            return self.endpoint
        if self.process is not None and self.process.poll() == self.STATE_ERROR:
            with open(self.log_path, "rb") as handle:
                handle.seek(log_start)
                said = handle.read().decode("utf-8", "replace").strip().splitlines()
            self.stop()
            from onysoft_tools.local.journal import StateError

            raise StateError(said[-1].removeprefix("onysoft dev: ") if said
                             else f"moto server refused the state dir (see {self.log_path})")
        self.stop()
        raise NotAnswering(f"moto server did not answer on port {port} (see {self.log_path})")

    def _wait_ready(self, timeout: float) -> bool:
        import httpx

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process is None or self.process.poll() is not None:
                return False
            try:
                httpx.get(self.endpoint + "/moto-api/", timeout=1.0)
                return True
            except httpx.HTTPError:
                time.sleep(0.1)
        return False

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self, grace: float = 60.0) -> None:
        """SIGTERM (moto compacts its journal into the snapshot, abandoning it past serial_moto's bound), then
        SIGKILL after `grace` seconds: every acknowledged write is in the journal already, so a kill loses none."""
        process, self.process = self.process, None
        if process is None:
            return
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(process.pid, signal.SIGTERM)  # its own group: anything it spawned goes too
            try:
                process.wait(grace)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        else:
            process.wait()


def connection_env(endpoint: str, host: str, port: int) -> dict[str, str]:
    from onysoft import config

    values = {
        "AWS_ENDPOINT_URL_DYNAMODB": endpoint,
        "AWS_REGION": REGION,
        "AWS_DEFAULT_REGION": REGION,
        "AWS_ACCESS_KEY_ID": DUMMY_ACCESS_KEY,
        "AWS_SECRET_ACCESS_KEY": DUMMY_SECRET_KEY,
    }
    for env_var in template.TABLE_ENV.values():
        values[env_var] = os.environ.get(env_var) or config.TABLE_ENV_DEFAULTS[env_var]
    url_host = f"[{host}]" if ":" in host else host
    values["ONYSOFT_GATEWAY_URL"] = f"http://{url_host}:{port}"
    return values
