"""Shared helpers: paths, the machine's description, statistics, child processes on loopback."""

from __future__ import annotations

import json
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
VENV_BIN = ROOT / ".venv" / "bin"
PYTHON = str(VENV_BIN / "python") if (VENV_BIN / "python").exists() else sys.executable


def onysoft_command() -> list[str]:
    """The project's `onysoft` CLI (its venv's script, or the same entry point through this Python)."""
    script = VENV_BIN / "onysoft"
    return [str(script)] if script.exists() else [PYTHON, "-m", "onysoft_tools.cli"]


def onysoft_json(state_dir: Path, *args: str, timeout: float = 60) -> dict:
    """`onysoft ARGS --state-dir S --json` against a local gateway's state dir: its JSON answer."""
    result = subprocess.run([*onysoft_command(), *args, "--state-dir", str(state_dir), "--json"], cwd=ROOT,
                            env=clean_env(), capture_output=True, text=True, timeout=timeout, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"onysoft {' '.join(args)}: {result.stderr}")
    return json.loads(result.stdout) if result.stdout.strip() else {}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def clean_env(**extra: str) -> dict[str, str]:
    """The environment for child processes: nothing that could reach AWS or another gateway."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "ONYSOFT_", "POWERTOOLS_"))}
    env.update(PYTHONUNBUFFERED="1", **extra)
    return env


def percentile(values: list[float], pct: float) -> float:
    """Nearest-rank percentile (p99 of 200 samples is the 198th smallest)."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(pct / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def machine() -> dict[str, str]:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory = ""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                memory = f"{int(line.split()[1]) / 1024 / 1024:.1f} GiB"
                break
    except OSError:
        pass
    python = subprocess.run([PYTHON, "-c", "import sys; print(sys.version.split()[0])"], capture_output=True,
                            text=True, check=False).stdout.strip() or platform.python_version()
    return {
        "cpu": cpu, "cores": str(os.cpu_count()), "memory": memory,
        "os": f"{platform.system()} {platform.release()} ({platform.machine()})",
        "python": python, "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
    }


def stop_process(process: subprocess.Popen | None, sig: int = signal.SIGINT, grace: float = 20.0) -> None:
    """Stop a child we started (by its pid), killing it if it lingers."""
    if process is None or process.poll() is not None:
        return
    process.send_signal(sig)
    try:
        process.wait(grace)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def wait_for(predicate, timeout: float, interval: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return False
