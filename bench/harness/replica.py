"""One app replica as docker-compose.yml runs it: daphne with --proxy-headers, for the tests and the
benchmarks of several replicas behind nginx (bench/harness/nginx.py)."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from bench.harness import daphne

READY_TIMEOUT = 90.0  # seconds for /health/ready to answer 200 after a start


class Replica:
    """A daphne on a port of its own that a restart keeps, serving voiceproxy with `env` (its
    database, Redis, VOICEPROXY_* knobs). Each start logs to `directory/NAME-N.log` (N counts the
    starts), so a restarted replica's lives can be read apart. Starts on construction."""

    def __init__(
        self,
        name: str,
        directory: Path,
        env: dict[str, str],
        application: str = "voiceproxy.asgi:application",
    ) -> None:
        self.name, self.directory, self.env, self.application = name, directory, env, application
        self.port = daphne.free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.starts = 0
        self.process: subprocess.Popen[bytes] | None = None
        self.start()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def log(self) -> str:
        return "".join(
            p.read_text(errors="replace") for p in sorted(self.directory.glob(f"{self.name}-*.log"))
        )

    def start(self) -> None:
        """Start it and wait until /health/ready answers 200. Raises RuntimeError, with its log, when
        it exits first or is not ready within READY_TIMEOUT."""
        self.starts += 1
        log_path = self.directory / f"{self.name}-{self.starts}.log"
        with log_path.open("wb") as log:  # the child keeps its own descriptor
            self.process = subprocess.Popen(
                [sys.executable, "-m", "daphne", "--proxy-headers", "-b", "127.0.0.1", "-p", str(self.port)]
                + [self.application],
                cwd=daphne.ROOT,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + READY_TIMEOUT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited ({self.process.returncode}):\n{self.log()}")
            try:
                if httpx.get(f"{self.url}/health/ready", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"{self.name} did not become ready:\n{self.log()}")

    def stop(self) -> int:
        """SIGTERM, as a rolling restart sends it: the replica drains, then exits; its exit code.
        Waits up to 60 s (raises subprocess.TimeoutExpired past that)."""
        if self.process is None:
            raise RuntimeError(f"{self.name} was never started")
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=60)

    def restart(self) -> int:
        code = self.stop()
        self.start()
        return code

    def served(self, path: str) -> int:
        """Requests for `path` in its access log (all its lives)."""
        return sum(1 for line in self.log().splitlines() if f" {path}" in line and '"' in line)
