"""Starting and stopping a real daphne process serving voiceproxy: for the tests and the benchmarks."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[2]  # the repository: bench/harness/daphne.py


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start(
    env: dict[str, str],
    log_path: Path,
    *,
    application: str = "voiceproxy.asgi:application",
    timeout: float = 60,
) -> tuple[subprocess.Popen[bytes], str]:
    """Start daphne on a free loopback port and wait until /health answers; returns (process, url).

    Raises RuntimeError, with the tail of the log, when daphne exits or does not answer in time.
    """
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with log_path.open("wb") as log:  # the child keeps its own descriptor
        process = subprocess.Popen(
            [sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p", str(port), application],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"daphne exited ({process.returncode}):\n{_tail(log_path)}")
        try:
            if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                return process, url
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    stop(process)
    raise RuntimeError(f"daphne did not answer /health within {timeout:g} s:\n{_tail(log_path)}")


def stop(process: subprocess.Popen[bytes]) -> None:
    """SIGINT (daphne's clean shutdown), then kill after 10 s."""
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGINT)
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def _tail(log_path: Path) -> str:
    return log_path.read_text(errors="replace")[-3000:] if log_path.is_file() else ""
