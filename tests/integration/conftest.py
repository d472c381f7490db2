"""A real local gateway for the integration tests: `onysoft dev` in a subprocess (moto server, the
template's routes, the real authorizer handler and proxy app), reached over real HTTP.

The session fixture starts one gateway on a free port and a fresh state dir; teardown stops it with
SIGINT (Ctrl-C) and checks that it and its moto server child are gone: nothing may be left behind.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[2]
VENV_BIN = ROOT / ".venv" / "bin"
START_TIMEOUT = 45.0
STOP_TIMEOUT = 20.0


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def onysoft_command() -> list[str]:
    """The `onysoft` console script of the project's venv, or the same entry point through this Python."""
    script = VENV_BIN / "onysoft"
    if script.exists() and (ROOT / "tools" / "onysoft_tools" / "cli.py").exists():
        return [str(script)]
    return [sys.executable, "-m", "onysoft_tools.cli"]


def dev_command() -> list[str]:
    if (ROOT / "tools" / "onysoft_tools" / "cli.py").exists():
        return [*onysoft_command(), "dev"]
    return [sys.executable, "-m", "onysoft_tools.dev"]  # the CLI's `dev` before cli.py exists


def clean_env(**extra: str) -> dict[str, str]:
    """The environment for child processes: nothing that could reach AWS or another gateway."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("AWS_", "ONYSOFT_")) and k not in ("PYTEST_CURRENT_TEST",)}
    if os.environ.get("ONYSOFT_IAM_RECORD"):  # the gateway records its functions' AWS calls too
        env["ONYSOFT_IAM_RECORD"] = os.environ["ONYSOFT_IAM_RECORD"]
    # The fault suites time out and reset connections on purpose, and would open the provider's circuit breaker
    # for their later requests: off unless a suite turns it on (test_circuit_breaker_http).
    env.update({"PYTHONUNBUFFERED": "1", "ONYSOFT_CIRCUIT_FAILURES": "0", **extra})
    return env


def _die_with_parent() -> None:  # pragma: no cover - runs in the child
    """If pytest itself is killed, the gateway gets SIGTERM (and stops its moto server)."""
    try:
        import ctypes

        ctypes.CDLL(None).prctl(1, signal.SIGTERM, 0, 0, 0)  # PR_SET_PDEATHSIG
    except Exception:  # noqa: BLE001, S110
        pass


def child_pids(pid: int) -> list[int]:
    """Direct children of `pid` (Linux /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()
        if int(fields[1]) == pid:
            found.append(int(entry.name))
    return found


def process_gone(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat[stat.rindex(")") + 2:].split()[0] == "Z"  # a zombie has exited


@dataclass
class DevGateway:
    state_dir: Path
    port: int = field(default_factory=free_port)
    process: subprocess.Popen | None = None
    log_path: Path | None = None
    keys: dict[str, str] = field(default_factory=dict)  # key type -> demo key
    demo: list[dict] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)  # dev.env
    known_keys: set[str] = field(default_factory=set)  # every plaintext key the tests have seen
    children: list[int] = field(default_factory=list)
    extra_env: dict[str, str] = field(default_factory=dict)  # e.g. ONYSOFT_PROVIDER_OPENAI_BASE_URL
    own_process_group: bool = False  # kill -9 tests: the gateway leads a process group of its own
    github: object = None  # a GitHubSigner whose reports this gateway takes (the session gateway's)
    extra_args: list[str] = field(default_factory=list)  # more `onysoft dev` options (e.g. --dynamodb-endpoint)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __iter__(self):  # base_url, keys, state_dir = gateway
        return iter((self.base_url, self.keys, self.state_dir))

    def start(self) -> DevGateway:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = self.state_dir.parent / f"{self.state_dir.name}-dev-{int(time.time() * 1000)}.log"
        command = [*dev_command(), "--port", str(self.port), "--state-dir", str(self.state_dir), *self.extra_args]
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(
                command, cwd=ROOT, env=clean_env(**self.extra_env), stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                preexec_fn=_die_with_parent,  # noqa: PLW1509
                process_group=0 if self.own_process_group else None,
            )
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if self.process.poll() is not None:
                pytest.fail(f"onysoft dev exited with {self.process.returncode}:\n{self.log()}")
            try:
                httpx.get(self.base_url + "/v1/models", timeout=2.0)
                break
            except httpx.HTTPError:
                if time.monotonic() > deadline:
                    self.stop(check=False)
                    pytest.fail(f"onysoft dev did not answer within {START_TIMEOUT}s:\n{self.log()}")
                time.sleep(0.1)
        demo_file = self.state_dir / "demo-keys.json"
        if demo_file.exists():
            self.demo = json.loads(demo_file.read_text())["keys"]
            self.keys = {entry["type"]: entry["key"] for entry in self.demo}
            self.known_keys.update(self.keys.values())
        from onysoft_tools.settings import read_env_file

        self.env = read_env_file(self.state_dir / "dev.env")
        self.children = child_pids(self.process.pid)
        return self

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path and self.log_path.exists() else ""

    def stop(self, *, check: bool = True, sig: int = signal.SIGINT) -> int | None:
        """Stop like Ctrl-C; with `check`, assert the gateway and every child of it (moto) exited."""
        process, self.process = self.process, None
        if process is None:
            return None
        children = child_pids(process.pid) or self.children
        if process.poll() is None:
            process.send_signal(sig)
        try:
            code = process.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
            for pid in children:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            if check:
                pytest.fail(f"onysoft dev did not stop on {signal.Signals(sig).name}:\n{self.log()}")
            return None
        deadline = time.monotonic() + 5
        while not all(process_gone(pid) for pid in children) and time.monotonic() < deadline:
            time.sleep(0.05)
        left = [pid for pid in children if not process_gone(pid)]
        for pid in left:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if check:
            assert children, "onysoft dev should have run moto server as its child"
            assert not left, f"processes left behind after onysoft dev stopped: {left}"
        return code

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        """`onysoft ARGS --state-dir <this gateway's> --json`, the way a user's script runs it."""
        command = [*onysoft_command(), *args, "--state-dir", str(self.state_dir), "--json"]
        result = subprocess.run(command, cwd=ROOT, env=clean_env(), capture_output=True, text=True,
                                timeout=60, check=False)
        if check and result.returncode != 0:
            pytest.fail(f"{' '.join(args)} exited with {result.returncode}:\n{result.stderr}")
        return result

    def cli_json(self, *args: str) -> dict:
        return json.loads(self.cli(*args).stdout)


@pytest.fixture(scope="session")
def gateway(tmp_path_factory) -> DevGateway:
    """One local gateway for the session: yields it (base_url, keys by type, state_dir, dev.env…). It takes
    GitHub's secret-scanning reports signed by `gateway.github` (tests/helpers.GitHubSigner)."""
    from tests.helpers import GitHubSigner

    signer = GitHubSigner(tmp_path_factory.mktemp("github") / "secret-scanning-keys.json")
    dev = DevGateway(tmp_path_factory.mktemp("onysoft") / "state",
                     extra_env={"ONYSOFT_GITHUB_SECRET_SCANNING_KEYS": str(signer.keys_file)})
    dev.github = signer
    dev.start()
    try:
        yield dev
    finally:
        code = dev.stop()
        assert code == 0, f"onysoft dev exited with {code} on Ctrl-C:\n{dev.log()}"


@pytest.fixture
def new_gateway(tmp_path):
    """Factory for extra gateways (restart tests); every one is stopped at the end, checked or not."""
    started: list[DevGateway] = []

    def make(state_dir: Path | None = None) -> DevGateway:
        dev = DevGateway(state_dir or tmp_path / "state")
        started.append(dev)
        return dev

    yield make
    for dev in started:
        dev.stop(check=False)


@pytest.fixture(scope="module")
def upstream():
    """A fake OpenAI-compatible provider on loopback, one per test module (onysoft_tools/fake_provider.py)."""
    from onysoft_tools.fake_provider import FakeUpstream

    fake = FakeUpstream().start()
    yield fake
    fake.stop()


@pytest.fixture(scope="module")
def dev(request, tmp_path_factory, upstream):
    """`onysoft dev` with the fake provider as `openai`, its models priced and USD→TRY set (ledger.start_gateway),
    one per test module; a module's GATEWAY_OPTIONS (e.g. {"read_timeout": "1.5"}) tune it."""
    from tests.integration.ledger import start_gateway

    name = request.module.__name__.rsplit(".", 1)[-1]
    gateway = start_gateway(tmp_path_factory.mktemp(name) / "state", upstream,
                            **getattr(request.module, "GATEWAY_OPTIONS", {}))
    try:
        yield gateway
    finally:
        gateway.stop()


@pytest.fixture(scope="module")
def browser():
    """Debian's Chromium through Playwright, one per test module (the browser tests: tests/integration/browser.py)."""
    from playwright.sync_api import sync_playwright

    from tests.integration.browser import launch

    with sync_playwright() as playwright:
        chromium = launch(playwright)
        try:
            yield chromium
        finally:
            chromium.close()
