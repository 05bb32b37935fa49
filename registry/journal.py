"""The audit journal: no audit row is lost when the process dies before writing it.

Audit rows reach the database from a background thread after the response (registry/audit.py),
so a process killed (SIGKILL, a crash, the OOM killer) just after delivering a response would lose
its row. Each process therefore appends a line to a journal file of its own when a request begins
and when its row is final, before the row is handed to the database thread: an append to a local
file that survives the process (the kernel keeps it), microseconds on the event loop.

- A process holds an exclusive `flock` on its journal for as long as it lives, so a journal whose
  lock can be taken belongs to a process that is gone.
- `recover()` (run by each server process as it starts) writes the rows of such journals that the
  database does not hold yet, then deletes them. A request that began but has no final row is
  logged with status 500 and error code `interrupted`: the process ended before its end was known.
- A journal is emptied whenever every row it began has been written, and deleted at a clean exit.
  Journals are kept per database (a directory named after it under VOICEPROXY_DATA_DIR/journal),
  so a journal is only ever recovered into the database its rows belong to.
"""

from __future__ import annotations

import atexit
import contextlib
import datetime
import fcntl
import hashlib
import json
import logging
import os
import socket
import threading
import uuid
from pathlib import Path
from typing import Any

from django.conf import settings
from django.db import connections

logger = logging.getLogger(__name__)

EMPTY_WHEN_LARGER_THAN = 1 << 20  # bytes: emptied once everything in it is written and it is this big
INTERRUPTED = "interrupted"


def directory() -> Path:
    """This database's journals: one directory per database, named after where it is."""
    db = connections["default"].settings_dict  # a test run's database name is already in place here
    where = f"{db['ENGINE']}|{db.get('HOST') or ''}|{db.get('PORT') or ''}|{db['NAME']}"
    return Path(settings.DATA_DIR) / "journal" / hashlib.sha256(where.encode()).hexdigest()[:16]


class Journal:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._fd: int | None = None
        self._path: Path | None = None
        self._pending = 0  # begun and not yet written to the database
        self._failed = False  # a row could not be written: the journal keeps it for recovery
        self._broken = False  # the journal could not be opened or written: off, said once

    def _open(self) -> int:
        if self._fd is None:
            folder = directory()
            folder.mkdir(parents=True, exist_ok=True)
            name = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}.jsonl"
            # Locked under a name recover() does not look at, then renamed: a process starting
            # now can never take a live journal for a dead one.
            scratch = folder / f"{name}.new"
            fd = os.open(scratch, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                os.rename(scratch, folder / name)
            except OSError:
                os.close(fd)
                scratch.unlink(missing_ok=True)
                raise
            self._fd, self._path = fd, folder / name
        return self._fd

    def _append(self, entry: dict[str, Any]) -> None:
        if self._broken:
            return
        line = (json.dumps(entry, separators=(",", ":"), default=str) + "\n").encode()
        try:
            os.write(self._open(), line)
        except OSError:
            self._broken = True
            logger.exception("the audit journal is off: rows are still written, but a crash may lose some")

    def begun(self, fields: dict[str, Any]) -> None:
        """A request began: `fields` has at least its request_id, method and endpoint."""
        with self._lock:
            self._pending += 1
            self._append({"begun": fields, "at": _now()})

    def ended(self, fields: dict[str, Any]) -> None:
        """A request's row is final (and about to be handed to the database thread)."""
        with self._lock:
            self._append({"row": fields, "at": _now()})

    def written(self, ok: bool) -> None:
        """The database thread is done with a row (`ok`: it was written)."""
        with self._lock:
            self._pending -= 1
            self._failed |= not ok
            if self._pending or self._failed or self._fd is None:
                return
            if os.fstat(self._fd).st_size > EMPTY_WHEN_LARGER_THAN:
                os.ftruncate(self._fd, 0)

    def close(self) -> None:
        """At a clean exit: a journal whose rows are all written is deleted."""
        with self._lock:
            if self._fd is None:
                return
            if not self._pending and not self._failed and self._path is not None:
                with contextlib.suppress(OSError):
                    self._path.unlink()
            os.close(self._fd)
            self._fd = None

    def path(self) -> Path | None:
        return self._path


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat()


journal = Journal()
atexit.register(journal.close)


def _rows(path: Path) -> list[dict[str, Any]]:
    """The rows a dead process's journal holds: final rows, and interrupted ones for requests that
    began and never ended."""
    begun: dict[str, dict[str, Any]] = {}
    ended: dict[str, dict[str, Any]] = {}
    for line in path.read_text(errors="replace").splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue  # the last line of a process killed mid-write
        if "row" in entry:
            ended[entry["row"]["request_id"]] = {**entry["row"], "created": entry["at"]}
        elif "begun" in entry:
            begun[entry["begun"]["request_id"]] = {**entry["begun"], "created": entry["at"]}
    rows = list(ended.values())
    for request_id, fields in begun.items():
        if request_id not in ended:
            rows.append(
                {
                    **fields,
                    "status_code": 500,
                    "error_type": "server_error",
                    "error_code": INTERRUPTED,
                    "error_message": "The server process ended before this request finished; "
                    "what it sent, if anything, is unknown.",
                }
            )
    return rows


def recover() -> int:
    """Write the rows of journals left by processes that are gone; returns how many were written.
    For the database thread (it uses the ORM)."""
    from registry.models import ApiKey, RequestLog

    folder = directory()
    if not folder.is_dir():
        return 0
    recovered = 0
    for path in sorted(folder.glob("*.jsonl")):
        if path == journal.path():
            continue
        try:
            fd = os.open(path, os.O_RDWR)
        except OSError:
            continue  # recovered and deleted by another process just now
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                continue  # its process is alive
            rows = _rows(path)
            known: set[str] = set()
            ids = [row["request_id"] for row in rows]
            for start in range(0, len(ids), 500):
                known.update(
                    RequestLog.objects.filter(request_id__in=ids[start : start + 500]).values_list(
                        "request_id", flat=True
                    )
                )
            missing = [_columns(row) for row in rows if row["request_id"] not in known]
            keys = set(
                ApiKey.objects.filter(pk__in={row.get("api_key_id") for row in missing}).values_list(
                    "pk", flat=True
                )
            )
            for row in missing:
                if row.get("api_key_id") not in keys:
                    row["api_key_id"] = None  # deleted since: its prefix stays in the row
            missing = [RequestLog(**row) for row in missing]
            RequestLog.objects.bulk_create(missing, batch_size=500)
            recovered += len(missing)
            path.unlink(missing_ok=True)
            if missing:
                logger.warning("recovered %d audit rows from %s", len(missing), path.name)
        finally:
            os.close(fd)
    return recovered


def _columns(row: dict[str, Any]) -> dict[str, Any]:
    from registry.models import RequestLog

    names = {field.attname for field in RequestLog._meta.concrete_fields} - {"id"}
    return {name: value for name, value in row.items() if name in names}
