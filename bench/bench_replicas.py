"""Replicas behind nginx: the same mixed load against one replica directly, one behind nginx, and two
behind nginx; what nginx itself adds; and what each kind of request costs in CPU, for a capacity model.

    cd /work/main && .venv/bin/python -m bench.bench_replicas [--clients 16] [--seconds 30]
        [--database postgres|sqlite] [--keep]

About 4 minutes with the defaults on 2 cores. `--database postgres` (the default) creates a throwaway
database on $DATABASE_URL's server and uses $REDIS_URL (bench_load.database: give it a Redis
database of its own); replicas share their cache through Redis, so `--database sqlite` runs setups
(1) and (2) only.

The deployment is the starter registry (bench.gateway.Gateway: migrate, loadregistry --starter, one
key) with a FakeUpstream as its default upstream, and replicas started as docker-compose.yml starts
them (bench/harness/replica.py: daphne --proxy-headers, VOICEPROXY_INFERENCE_THREADS=2 and the
default queue limit of 32 each). nginx is Debian's binary serving the production template
(bench/harness/nginx.py) with docker-compose.yml's defaults: least connections, upstream keep-alive,
a request a replica answered 503 sent once to the other.

1. Engine costs, on replica A directly with one client: each kind of request alone for a few seconds;
   the replica's CPU seconds (/proc, all threads) per request, and the medians of the audit rows'
   stt_ms / llm_ms / tts_ms (wall time in the engine, here with the machine to itself).
2. nginx's overhead: GET /v1/models, 1 and then 4 clients, in alternating rounds directly to replica
   A and through nginx in front of it alone: the median latency each way, the difference, and nginx's
   own CPU seconds per request (master and worker).
3. The mixed load of bench_load (transcription tiny.en, Piper speech, streamed and whole voice chat,
   GET /v1/models) with `--clients` clients for `--seconds` against (1) replica A, (2) nginx -> A,
   (3) nginx -> A + B: successful requests per second, p50 / p99 per kind, statuses (503s are
   admission control; "errors" are anything else that is not a 200), the replicas' and nginx's CPU,
   how the requests were shared between the replicas, and audit rows against requests sent.

The clients, the FakeUpstream and nginx run on the same cores as the replicas: on a 2-core machine two
replicas compete for the same CPUs, so (3) shows what balancing costs, not what a second host gains;
the per-request CPU seconds of (1) are what a capacity model for more cores or hosts starts from.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script from the repo root

from bench.bench_load import (  # noqa: E402
    CLIPS,
    KINDS,
    MIX,
    MODEL,
    REPLY,
    TOKEN_DELAY_S,
    Budget,
    Sent,
    audit_rows,
    cpu_seconds,
    database,
    p50_p99,
    run_clients,
    status_counts,
)
from bench.gateway import Gateway  # noqa: E402
from bench.harness.nginx import PRODUCTION, Nginx  # noqa: E402
from bench.harness.replica import Replica  # noqa: E402
from bench.harness.speech import speech  # noqa: E402
from bench.harness.upstream import FakeUpstream  # noqa: E402
from bench.report import markdown_table, ms, print_machine, warn_if_busy  # noqa: E402

COST_KINDS = ("transcription", "speech", "chat-stream", "models")
COST_SECONDS = 8.0  # per kind, one client
COST_REQUESTS = {"transcription": 20, "speech": 20, "chat-stream": 8, "models": 300}
OVERHEAD_CLIENTS = (1, 4)
OVERHEAD_ROUNDS = 4  # per side, alternating
OVERHEAD_REQUESTS = 60  # per client per round
SETTLE_S = 2.0  # between phases: the audit writer and the last connections finish
BUSY_LOAD = 1.0


class Deployment(Gateway):
    """The gateway's database, registry and key, without a daphne of its own: replicas serve it."""

    def _start(self) -> None:
        pass


def process_cpu(pids: list[int]) -> float:
    """CPU seconds used so far by `pids` together (0 for one that has gone)."""
    total = 0.0
    for pid in pids:
        with contextlib.suppress(OSError):
            total += cpu_seconds(pid)
    return total


def pid_of(replica: Replica) -> int:
    if replica.process is None:
        raise RuntimeError(f"{replica.name} is not running")
    return replica.process.pid


def load(
    url: str, key: str, clients: int, kinds: tuple[str, ...], budget: Budget, clips: list[bytes], tag: str
) -> tuple[list[Sent], float]:
    """Run the clients to the end of `budget`; what they sent and the seconds it took."""
    started = time.monotonic()
    sent = asyncio.run(run_clients(url, key, clients, kinds, budget, clips, tag))
    return sent, time.monotonic() - started


def is_error(sent: Sent) -> bool:
    return sent.status is None or sent.stream_error != "" or sent.status not in (200, 503)


# --- 1. engine costs --------------------------------------------------------------------------------------


@dataclass
class Cost:
    kind: str
    sent: list[Sent]
    cpu: float  # the replica's CPU seconds over the phase
    engine: dict[str, list[float]]  # audit column -> seconds per request


def engine_costs(deployment: Deployment, replica: Replica, clips: list[bytes], tag: str) -> list[Cost]:
    costs = []
    for kind in COST_KINDS:
        before = cpu_seconds(pid_of(replica))
        budget = Budget(time.monotonic() + COST_SECONDS, COST_REQUESTS[kind])
        sent, _ = load(replica.url, deployment.key, 1, (kind,), budget, clips, f"{tag}-{kind}")
        costs.append(Cost(kind, sent, cpu_seconds(pid_of(replica)) - before, {}))
    time.sleep(SETTLE_S)
    columns = ("stt_ms", "llm_ms", "tts_ms")
    rows = deployment.django(
        "import json\n"
        "from registry.models import RequestLog\n"
        f"rows = RequestLog.objects.filter(client_request_id__startswith={tag + '-'!r}, status_code=200)"
        f".values_list('client_request_id', *{list(columns)!r})\n"
        "print(json.dumps(list(rows)))\n"
    )
    for cost in costs:
        prefix = f"{tag}-{cost.kind}-"
        mine = [row[1:] for row in rows if row[0].startswith(prefix)]
        for i, column in enumerate(columns):
            values = [row[i] / 1000 for row in mine if row[i] is not None]
            if values:
                cost.engine[column.removesuffix("_ms")] = values
    return costs


def cost_rows(costs: list[Cost], cores: int) -> list[list[str]]:
    rows = []
    for cost in costs:
        ok = [s for s in cost.sent if s.status == 200 and not s.stream_error]
        per_request = cost.cpu / max(1, len(cost.sent))
        engine = ", ".join(f"{name} {ms(statistics.median(v))}" for name, v in cost.engine.items())
        rows.append(
            [
                cost.kind,
                f"{len(ok)}/{len(cost.sent)}",
                f"{per_request:.3f} s",
                engine or "-",
                ms(statistics.median(s.total for s in ok)) if ok else "-",
                f"{cores / per_request:.1f}" if per_request else "-",
            ]
        )
    return rows


# --- 2. nginx's overhead ----------------------------------------------------------------------------------


@dataclass
class Overhead:
    clients: int
    direct: list[float] = field(default_factory=list)
    proxied: list[float] = field(default_factory=list)
    failed: int = 0
    nginx_cpu: float = 0.0
    proxied_requests: int = 0


def overhead(
    deployment: Deployment, replica: Replica, edge: Nginx, clips: list[bytes], tag: str
) -> list[Overhead]:
    found = []
    for clients in OVERHEAD_CLIENTS:
        result = Overhead(clients)
        for n in range(2 * OVERHEAD_ROUNDS):
            proxied = (n % 2 == 1) != (n % 4 >= 2)  # direct, nginx, nginx, direct, ...: no side always first
            nginx_before = process_cpu(edge.pids())
            budget = Budget(time.monotonic() + 60, OVERHEAD_REQUESTS * clients)
            url = edge.url if proxied else replica.url
            sent, _ = load(url, deployment.key, clients, ("models",), budget, clips, f"{tag}-{clients}-{n}")
            result.failed += sum(s.status != 200 for s in sent)
            latencies = [s.total for s in sent if s.status == 200]
            if proxied:
                result.proxied += latencies
                result.proxied_requests += len(sent)
                result.nginx_cpu += process_cpu(edge.pids()) - nginx_before
            else:
                result.direct += latencies
        found.append(result)
    return found


def overhead_rows(found: list[Overhead]) -> list[list[str]]:
    rows = []
    for o in found:
        direct, proxied = statistics.median(o.direct), statistics.median(o.proxied)
        rows.append(
            [
                str(o.clients),
                f"{len(o.direct)} / {len(o.proxied)}" + (f" ({o.failed} failed)" if o.failed else ""),
                p50_p99(o.direct),
                p50_p99(o.proxied),
                f"{(proxied - direct) * 1000:+.2f} ms",
                f"{o.nginx_cpu / max(1, o.proxied_requests) * 1000:.2f} ms",
            ]
        )
    return rows


# --- 3. the mixed load ------------------------------------------------------------------------------------


@dataclass
class Setup:
    name: str
    url: str
    replicas: list[Replica]
    edge: Nginx | None = None
    sent: list[Sent] = field(default_factory=list)
    seconds: float = 0.0
    replica_cpu: float = 0.0
    nginx_cpu: float = 0.0
    served: list[int] = field(default_factory=list)
    audit: str = ""


def mixed_load(
    deployment: Deployment, setup: Setup, clients: int, seconds: float, clips: list[bytes], tag: str
) -> None:
    replica_pids = [pid_of(r) for r in setup.replicas]
    edge_pids: Callable[[], list[int]] = setup.edge.pids if setup.edge else list
    served = [r.served("/v1/") for r in setup.replicas]
    replica_before, nginx_before = process_cpu(replica_pids), process_cpu(edge_pids())
    budget = Budget(time.monotonic() + seconds, None)
    setup.sent, setup.seconds = load(setup.url, deployment.key, clients, MIX, budget, clips, tag)
    setup.replica_cpu = process_cpu(replica_pids) - replica_before
    setup.nginx_cpu = process_cpu(edge_pids()) - nginx_before
    setup.served = [r.served("/v1/") - before for r, before in zip(setup.replicas, served, strict=True)]
    rows = audit_rows(deployment, tag, len(setup.sent))
    found = sum(len(v) for v in rows.by_id.values())
    missing = sum(s.request_id not in rows.by_id for s in setup.sent)
    setup.audit = f"{found} / {len(setup.sent)}" + (f" ({missing} missing)" if missing else "")
    time.sleep(SETTLE_S)


def summary_rows(setups: list[Setup]) -> list[list[str]]:
    rows = []
    for s in setups:
        ok = sum(x.status == 200 and not x.stream_error for x in s.sent)
        shares = " / ".join(str(n) for n in s.served) if len(s.served) > 1 else "-"
        rows.append(
            [
                s.name,
                str(len(s.sent)),
                f"{ok / s.seconds:.2f}",
                str(sum(x.status == 503 for x in s.sent)),
                str(sum(is_error(x) and x.status != 503 for x in s.sent)),
                f"{s.replica_cpu / s.seconds:.2f}",
                f"{s.nginx_cpu / s.seconds:.3f}" if s.edge else "-",
                shares,
                s.audit,
            ]
        )
    return rows


def latency_rows(setups: list[Setup]) -> list[list[str]]:
    rows = []
    for kind in KINDS:
        row = [kind]
        for s in setups:
            ok = [x.total for x in s.sent if x.kind == kind and x.status == 200 and not x.stream_error]
            row.append(p50_p99(ok))
        rows.append(row)
    first_audio = ["chat-stream, first audio"]
    for s in setups:
        ok = [x.first_audio for x in s.sent if x.kind == "chat-stream" and x.first_audio is not None]
        first_audio.append(p50_p99(ok))
    return [*rows, first_audio]


# --- the run ----------------------------------------------------------------------------------------------


def warm(deployment: Deployment, replica: Replica, clips: list[bytes], tag: str) -> None:
    """One request of each kind: the models load before anything is measured."""
    sent, _ = load(
        replica.url, deployment.key, 1, KINDS, Budget(time.monotonic() + 300, len(KINDS)), clips, tag
    )
    if any(s.status != 200 or s.stream_error for s in sent):
        raise RuntimeError(
            f"warm-up of {replica.name} failed: {status_counts(sent)}\n{replica.log()[-3000:]}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--clients", type=int, default=16, help="concurrent clients of the mixed load (16)")
    parser.add_argument("--seconds", type=float, default=30, help="how long each mixed load sends (30)")
    parser.add_argument("--database", choices=["postgres", "sqlite"], default="postgres")
    parser.add_argument("--keep", action="store_true", help="keep the replicas' and nginx's logs")
    args = parser.parse_args()
    if args.clients < 1 or args.seconds <= 0:
        parser.error("--clients and --seconds must be positive")
    bench_started = time.perf_counter()
    facts, load_before = print_machine()
    cores = len(os.sched_getaffinity(0))
    clips = [speech(text) for text in CLIPS]
    tag = f"replicas{os.getpid()}"
    workdir = Path(tempfile.mkdtemp(prefix="voiceproxy-replicas."))
    with (
        FakeUpstream(reply=REPLY, token_delay=TOKEN_DELAY_S) as upstream,
        database(args.database) as db_env,
        Deployment(env=db_env, keep=args.keep) as deployment,
        contextlib.ExitStack() as running,  # replicas and nginx stop before the database goes
    ):
        if not args.keep:
            running.callback(shutil.rmtree, workdir, ignore_errors=True)
        route = {"name": "bench-upstream", "base_url": upstream.base_url, "models": [MODEL], "default": True}
        deployment.load_registry({"upstreams": [route]})
        replicas = []
        for name in ["a", "b"] if args.database == "postgres" else ["a"]:
            replicas.append(Replica(name, workdir, deployment.env))
            running.callback(replicas[-1].stop)
        edges = [Nginx(workdir / "edge-a", replicas[0].address, **PRODUCTION)]
        running.callback(edges[0].stop)
        if len(replicas) > 1:
            edges.append(Nginx(workdir / "edge-ab", replicas[0].address, replicas[1].address, **PRODUCTION))
            running.callback(edges[1].stop)
        for replica in replicas:
            warm(deployment, replica, clips, f"{tag}-warm-{replica.name}")
        print(f"replicas: {', '.join(r.url for r in replicas)}; nginx: {', '.join(e.url for e in edges)}")
        if args.keep:
            print(f"kept:    {workdir} (replica and nginx logs), {deployment.data_dir}")

        costs = engine_costs(deployment, replicas[0], clips, f"{tag}-cost")
        found = overhead(deployment, replicas[0], edges[0], clips, f"{tag}-overhead")
        setups = [
            Setup("(1) replica A directly", replicas[0].url, replicas[:1]),
            Setup("(2) nginx -> A", edges[0].url, replicas[:1], edges[0]),
        ]
        if len(edges) > 1:
            setups.append(Setup("(3) nginx -> A + B", edges[1].url, replicas, edges[1]))
        for n, setup in enumerate(setups, 1):
            mixed_load(deployment, setup, args.clients, args.seconds, clips, f"{tag}-mixed{n}")

    print(f"\n== Engine costs: one client, one kind at a time, on replica A directly ({cores} cores) ==")
    headers = ["kind", "200s / sent", "replica CPU per request", "engine wall (median)", "latency p50",
               f"CPU-bound ceiling on {cores} cores (req/s)"]  # fmt: skip
    print(markdown_table(headers, cost_rows(costs, cores)))
    print("  (a replica of C cores serves at most C / (CPU per request) requests/s of a kind; chat-stream's")
    print("   CPU includes its transcription and its synthesis; the LLM is elsewhere)")
    print(
        "\n== nginx's overhead: GET /v1/models, directly to A and through nginx -> A, alternating rounds =="
    )
    headers = ["clients", "requests direct / nginx", "direct p50 / p99", "nginx p50 / p99", "added (median)",
               "nginx CPU per request"]  # fmt: skip
    print(markdown_table(headers, overhead_rows(found)))
    print(f"\n== Mixed load: {args.clients} clients, {args.seconds:g} s, {args.database} ==")
    headers = ["setup", "sent", "200s/s", "503s", "errors", "replica CPU (cores)", "nginx CPU (cores)",
               "/v1/ requests A / B", "audit rows / sent"]  # fmt: skip
    print(markdown_table(headers, summary_rows(setups)))
    print("\n   latency of the 200s, p50 / p99:")
    print(markdown_table(["kind", *(s.name for s in setups)], latency_rows(setups)))
    for s in setups:
        print(f"   {s.name}: {status_counts(s.sent)}")
    if args.database != "postgres":
        print("\n   (3) needs PostgreSQL + Redis: replicas share their cache through Redis")
    warn_if_busy(load_before, BUSY_LOAD)
    wall = time.perf_counter() - bench_started
    print(f"\n({facts['cores']} cores, {facts['cpu']}; bench wall time {wall:.0f} s)")


if __name__ == "__main__":
    main()
