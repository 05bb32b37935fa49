"""nginx in front of daphne replicas, for the tests and the benchmarks: the real
voiceproxy/nginx/voiceproxy.conf.template, rendered as the official nginx image renders it and run by
Debian's nginx binary on loopback, as a user other than root too.

The defaults are short on purpose (a 2 MiB body limit, 2 s client timeouts), so the tests of slow and
oversized clients finish quickly; `PRODUCTION` holds docker-compose.yml's defaults, for a benchmark
that should measure nginx as it is deployed.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

from bench.harness import daphne

NGINX = shutil.which("nginx") or next((p for p in ["/usr/sbin/nginx"] if os.access(p, os.X_OK)), None)
TEMPLATE = daphne.ROOT / "voiceproxy" / "nginx" / "voiceproxy.conf.template"
BODY_LIMIT = 2 * 1024 * 1024  # above nginx's own default (1 MiB), as the app's 26 MiB is
TIMEOUT = 2  # seconds: client_header_timeout, client_body_timeout, send_timeout, keepalive_timeout
START_TIMEOUT = 15.0  # seconds for nginx to listen

# docker-compose.yml's defaults for the template's variables (all but the addresses).
PRODUCTION = {
    "VOICEPROXY_MAX_BODY_BYTES": "27262976",
    "VOICEPROXY_CLIENT_HEADER_TIMEOUT": "10s",
    "VOICEPROXY_CLIENT_BODY_TIMEOUT": "30s",
    "VOICEPROXY_SEND_TIMEOUT": "30s",
    "VOICEPROXY_KEEPALIVE_TIMEOUT": "30s",
    "VOICEPROXY_STREAM_TIMEOUT": "300s",
}


def render(template: str, env: dict[str, str], env_filter: str = "^VOICEPROXY_") -> str:
    """What the official image's 20-envsubst-on-templates.sh does: `envsubst` limited to the defined
    names that match NGINX_ENVSUBST_FILTER, so `${NAME}` and `$NAME` of those are replaced and every
    other `$...` (nginx's own variables) is left as it is."""
    names = {name for name in env if re.search(env_filter, name)}

    def substitute(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2)
        return env[name] if name in names else match.group(0)

    return re.sub(r"\$\{([A-Za-z_]\w*)\}|\$([A-Za-z_]\w*)", substitute, template)


def settings(upstream: str, listen: str, **overrides: str) -> dict[str, str]:
    """The template's variables: nginx on `listen` in front of `upstream`, the short defaults above,
    `overrides` last."""
    values = {
        "VOICEPROXY_LISTEN": listen,
        "VOICEPROXY_UPSTREAM": upstream,
        "VOICEPROXY_MAX_BODY_BYTES": str(BODY_LIMIT),
        "VOICEPROXY_CLIENT_HEADER_TIMEOUT": f"{TIMEOUT}s",
        "VOICEPROXY_CLIENT_BODY_TIMEOUT": f"{TIMEOUT}s",
        "VOICEPROXY_SEND_TIMEOUT": f"{TIMEOUT}s",
        "VOICEPROXY_KEEPALIVE_TIMEOUT": f"{TIMEOUT}s",
        "VOICEPROXY_STREAM_TIMEOUT": "60s",
    }
    values.update(overrides)
    return values


# The official image's /etc/nginx/nginx.conf, with its paths moved into the harness's directory (so it
# also runs as a user other than root) and in the foreground.
MAIN_CONF = """\
{user}worker_processes 1;
daemon off;
error_log {dir}/error.log notice;
pid {dir}/nginx.pid;
events {{
    worker_connections 1024;
}}
http {{
    default_type application/octet-stream;
    access_log {dir}/access.log;
    client_body_temp_path {dir}/client_temp;
    proxy_temp_path {dir}/proxy_temp;
    fastcgi_temp_path {dir}/fastcgi_temp;
    uwsgi_temp_path {dir}/uwsgi_temp;
    scgi_temp_path {dir}/scgi_temp;
    sendfile on;
    keepalive_timeout 65;
    include {dir}/conf.d/*.conf;
}}
"""


class Nginx:
    """An nginx process serving the rendered template from `directory`, on a free loopback port.

    Raises RuntimeError when there is no nginx binary, when `nginx -t` refuses the configuration, or
    when it does not listen within START_TIMEOUT; `stop()` ends it (SIGTERM, then kill)."""

    def __init__(self, directory: Path, upstream: str, *more: str, **overrides: str) -> None:
        """nginx in front of `upstream`, and of the `more` replicas beside it (one server line each,
        as a configuration listing named replicas has them); `overrides` as for `settings`."""
        if NGINX is None:
            raise RuntimeError(
                "no nginx binary on PATH or at /usr/sbin/nginx (Debian: apt-get install nginx)"
            )
        self.directory = directory
        self.port = daphne.free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        (directory / "conf.d").mkdir(parents=True)
        rendered = render(TEMPLATE.read_text(), settings(upstream, f"127.0.0.1:{self.port}", **overrides))
        if "${" in rendered:
            raise RuntimeError("a template variable without a value")
        line = next(line for line in rendered.splitlines() if line.strip().startswith(f"server {upstream} "))
        rendered = rendered.replace(
            line, "\n".join([line, *(line.replace(upstream, other) for other in more)])
        )
        (directory / "conf.d" / "voiceproxy.conf").write_text(rendered)
        # How long nginx keeps a replica out after a failed attempt (the template's fail_timeout).
        found = re.search(r"fail_timeout=(\d+)s", line)
        self.fail_timeout = float(found.group(1)) if found else 10.0  # nginx's default
        # As root, nginx would run its workers as "nobody", who may not write the temp directories here.
        user = "user root root;\n" if os.geteuid() == 0 else ""
        (directory / "nginx.conf").write_text(MAIN_CONF.format(user=user, dir=directory))
        command = [NGINX, "-p", str(directory), "-c", str(directory / "nginx.conf"), "-e", "stderr"]
        check = subprocess.run([*command, "-t"], capture_output=True, text=True, check=False)
        if check.returncode != 0:
            raise RuntimeError(f"nginx -t refused the configuration:\n{check.stderr}")
        with (directory / "stderr.log").open("wb") as log:
            self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"nginx did not start:\n{self.log()}") from None
                time.sleep(0.05)

    def pids(self) -> list[int]:
        """The master's process id and its workers' (the processes whose parent it is, from /proc)."""
        master = self.process.pid
        workers = []
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                parent = int(stat.read_text().rpartition(")")[2].split()[1])
            except (OSError, IndexError, ValueError):
                continue  # gone meanwhile
            if parent == master:
                workers.append(int(stat.parent.name))
        return [master, *workers]

    def log(self) -> str:
        logs = [self.directory / "stderr.log", self.directory / "error.log"]
        return "".join(path.read_text(errors="replace") for path in logs if path.is_file())

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
