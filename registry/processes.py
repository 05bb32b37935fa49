"""Every server process's model cache, seen and steered from any process, through the database.

Each daphne process (voiceproxy/asgi.py starts `heartbeat`; management commands and in-process
tests do not) has a `ServerProcess` row:
- every VOICEPROXY_HEARTBEAT_SECONDS it writes what its cache holds (per model: state, device,
  memory, uses, loaded since, last error), its resident memory and its inference pool's load;
- about once a second it takes the `CacheCommand` rows sent to it (the admin's "load" and
  "unload"), carries them out and writes each result back: a load runs in the inference pool (it
  blocks, maybe for a download: never on the event loop, nor on the heartbeat's thread, so a long
  load does not make the process look gone), an unload at once;
- on a clean exit (the drain, voiceproxy/drain.py) it deletes its row. A row not refreshed for
  GONE_AFTER_BEATS of its heartbeats is a process gone (killed, or its host down): shown as gone,
  deleted after FORGET_AFTER.

The database is the messenger, so this works the same on SQLite and PostgreSQL, with or without
Redis. The heartbeat's queries run on a database thread of its own (registry/db_threads.py), never
on a request's. Liveness compares each host's clock with the reader's: keep them in sync (NTP).

The admin reads the rows (with its own process's cache read fresh) and sends commands through
registry/fleet.py.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import socket
import threading
import time
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.db import connection
from django.utils import timezone
from django.utils.dateparse import parse_datetime

import voiceproxy
from registry import catalog, db_threads
from registry.errors import OpenAIError
from registry.models import CacheCommand, ServerProcess, SpeechModel, SpeechToTextModel, TextToSpeechModel
from registry.resolved import ResolvedModel
from registry.speech import workers
from registry.speech.cache import Status, model_cache
from registry.speech.memory import resident_bytes

logger = logging.getLogger(__name__)

GONE_AFTER_BEATS = 3  # heartbeats missed before a process is shown as gone
FORGET_AFTER = timedelta(hours=1)  # a gone process's row is deleted after this long
KEEP_COMMANDS = timedelta(days=1)  # commands (and their results) are kept this long
POLL_SECONDS = 1.0  # how often a process looks for commands sent to it
_PURGE_EVERY = 60.0  # seconds between deletions of old rows


# --- what a process reports ------------------------------------------------------------------------


def status_json(status: Status) -> dict[str, Any]:
    """One model in this process's cache (the cache's own Status), as its row stores it."""
    return {
        "model_id": status.model_id,
        "state": status.state,
        "device": status.device,
        "loaded_at": status.loaded_at.isoformat() if status.loaded_at else None,
        "load_seconds": round(status.load_seconds, 3),
        "uses": status.uses,
        "in_use": status.in_use,
        "error": status.error[:2000],
        "memory_bytes": status.memory_bytes,
    }


def parse_status(data: dict[str, Any]) -> Status:
    """A model in another process's cache, as that process reported it."""
    loaded_at = data.get("loaded_at")
    return Status(
        model_id=str(data.get("model_id", "")),
        state=str(data.get("state", "")),
        device=str(data.get("device", "")),
        loaded_at=parse_datetime(loaded_at) if isinstance(loaded_at, str) else None,
        load_seconds=float(data.get("load_seconds") or 0.0),
        uses=int(data.get("uses") or 0),
        in_use=int(data.get("in_use") or 0),
        error=str(data.get("error", "")),
        memory_bytes=int(data.get("memory_bytes") or 0),
    )


def pool_stats() -> dict[str, int]:
    """The inference pool of this process: its threads, units running, calls admitted, and its bound."""
    running, admitted = workers.running(), workers.in_flight()
    return {
        "threads": settings.VOICEPROXY_INFERENCE_THREADS,
        "running": running,
        "waiting": max(0, admitted - running),
        "capacity": workers.capacity(),
    }


# --- the heartbeat ---------------------------------------------------------------------------------


class Heartbeat:
    """This process's reporting: `start()` once serving; `stop()` as it exits (deletes its row)."""

    def __init__(self) -> None:
        host = socket.gethostname()[:60]
        self.id = f"{host}:{os.getpid()}:{secrets.token_hex(4)}"  # unique per process start
        self.hostname = host
        self.started = timezone.now()
        self._db = db_threads.DatabaseThread("voiceproxy-db-heartbeat")
        self._stopped = threading.Event()
        self._thread: threading.Thread | None = None
        self._failing = False
        self._purged = 0.0

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive() and not self._stopped.is_set()

    def start(self) -> None:
        if self._thread is not None:
            return
        self._thread = threading.Thread(target=self._run, name="voiceproxy-heartbeat", daemon=True)
        self._thread.start()
        logger.info("reporting this process's model cache as %s", self.id)

    def stop(self, timeout: float = 2.0) -> None:
        """Stop beating and delete this process's row (a beat already queued runs first)."""
        self._stopped.set()
        if self._thread is None:
            return
        try:
            self._db.submit(_forget, self.id).result(timeout=timeout)
        except Exception:  # noqa: BLE001 - exiting: the row shows as gone after three beats instead
            logger.warning("could not delete this process's row; it will show as gone", exc_info=True)

    def _run(self) -> None:
        next_beat = 0.0
        while not self._stopped.is_set():
            interval = settings.VOICEPROXY_HEARTBEAT_SECONDS
            if time.monotonic() >= next_beat:
                next_beat = time.monotonic() + interval
                self._safely(self._db.call, self._beat)
            self._safely(self._poll)
            self._stopped.wait(min(POLL_SECONDS, interval))

    def _safely(self, fn: Any, *args: Any) -> None:
        # A database that is down must not stop the heartbeat: it beats again once it is back.
        try:
            fn(*args)
        except Exception:  # noqa: BLE001 - logged once per outage
            if not self._failing:
                logger.exception("the model cache report failed; retrying")
            self._failing = True
        else:
            self._failing = False

    def _beat(self) -> None:
        """Write this process's row (on the heartbeat's database thread)."""
        if self._stopped.is_set():
            return  # stop() deletes the row after us: do not write it again
        now = timezone.now()
        fields = {
            "hostname": self.hostname,
            "pid": os.getpid(),
            "version": voiceproxy.__version__,
            "started": self.started,
            "heartbeat": now,
            "interval": settings.VOICEPROXY_HEARTBEAT_SECONDS,
            "memory_bytes": resident_bytes(),
            "pool": pool_stats(),
            "cache": [status_json(s) for s in model_cache.statuses()],
        }
        if not ServerProcess.objects.filter(id=self.id).update(**fields):
            ServerProcess.objects.create(id=self.id, **fields)
        if time.monotonic() - self._purged > _PURGE_EVERY:
            self._purged = time.monotonic()
            ServerProcess.objects.filter(heartbeat__lt=now - FORGET_AFTER).delete()
            CacheCommand.objects.filter(created__lt=now - KEEP_COMMANDS).delete()

    def _poll(self) -> None:
        for pk, action, model_id in self._db.call(_take, self.id):
            if action == CacheCommand.UNLOAD:
                done = model_cache.unload(model_id)
                self._finish(pk, ok=True, result="Unloaded." if done else "Was not loaded.")
                continue
            model = self._db.call(registry_row, model_id)
            if model is None:
                self._finish(pk, ok=False, result=f"No model {model_id!r} in the registry.")
            elif not model.enabled:
                self._finish(pk, ok=False, result=f"{model_id} is disabled; enable it first.")
            elif (status := model_cache.status(model_id)).state == "loaded":
                self._finish(pk, ok=True, result=f"Already loaded on {status.device}.")
            else:
                resolved = catalog.resolved(model)  # frozen: no model instance leaves this thread
                threading.Thread(
                    target=self._load, args=(pk, resolved), name="voiceproxy-cache-command", daemon=True
                ).start()

    def _load(self, pk: int, model: ResolvedModel) -> None:
        """Load in the inference pool, from a thread of its own (the heartbeat goes on meanwhile)."""
        try:
            asyncio.run(workers.run(model_cache.load, model))
        except OpenAIError as exc:  # ModelUnavailable, ServerBusy
            self._finish(pk, ok=False, result=exc.message)
            return
        except Exception as exc:  # noqa: BLE001 - the admin reads why
            logger.exception("load command for %s failed", model.model_id)
            self._finish(pk, ok=False, result=f"{type(exc).__name__}: {exc}")
            return
        status = model_cache.status(model.model_id)
        self._finish(pk, ok=True, result=f"Loaded on {status.device} in {status.load_seconds:.2f} s.")

    def _finish(self, pk: int, *, ok: bool, result: str) -> None:
        self._db.later(_answer, pk, ok, result, what=f"write the result of cache command {pk}")


def _take(process_id: str) -> list[tuple[int, str, str]]:
    """The commands sent to this process not yet taken, marked taken."""
    rows = list(
        CacheCommand.objects.filter(target=process_id, taken_at__isnull=True)
        .order_by("pk")
        .values_list("pk", "action", "model_id")
    )
    if rows:
        CacheCommand.objects.filter(pk__in=[r[0] for r in rows]).update(taken_at=timezone.now())
    return rows


def _answer(pk: int, ok: bool, result: str) -> None:
    CacheCommand.objects.filter(pk=pk).update(ok=ok, result=result[:2000], done_at=timezone.now())


def _forget(process_id: str) -> None:
    ServerProcess.objects.filter(id=process_id).delete()
    connection.close()  # the heartbeat thread's kept connection: the process is leaving


def registry_row(model_id: str) -> SpeechModel | None:
    """The speech model (either task) whose id is `model_id`, enabled or not."""
    for model in (SpeechToTextModel, TextToSpeechModel):
        row = model.objects.filter(model_id=model_id).first()
        if row is not None:
            return row
    return None


heartbeat = Heartbeat()
