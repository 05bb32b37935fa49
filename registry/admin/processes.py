"""The admin's "Model cache" page: every server process with what its cache holds, and buttons that
load or unload a model in one process or in all of them (registry/fleet.py sends them,
registry/processes.py carries them out).

This process acts at once, on the admin's own thread; the others take a command within about a
second and write back their answer, which the page shows (it reloads itself while any is pending).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import reverse
from django.utils import timezone

from registry import fleet, processes
from registry.admin_site import extra_page
from registry.models import CacheCommand, SpeechModel, SpeechToTextModel, TextToSpeechModel

_MODEL_NAMES = ("speechtotextmodel", "texttospeechmodel")
ALL = "*"  # the target that means every live process
_REFRESH_SECONDS = 2  # while a command is unanswered
_UNANSWERED_AFTER = timedelta(minutes=2)  # a command to a live process not taken by then is shown stuck


def model_cache_view(request: HttpRequest) -> HttpResponse:
    """GET: the page (for who may view speech models); POST: one button (for who may change them)."""
    if request.method == "POST":
        if not _may_change(request, None):
            raise PermissionDenied  # may change no speech model; _act checks the model's own task
        _act(request)
        return HttpResponseRedirect(reverse("admin:model-cache"))
    known = fleet.read(fresh=True)
    models = _registry_models()
    commands = fleet.recent_commands()
    names = {p.id: p.name for p in known.processes}
    live = {p.id for p in known.live}
    rows = [_command_row(c, names, live) for c in commands]
    changeable = _changeable(request, models)
    context = {
        **admin.site.each_context(request),
        "title": "Model cache",
        "processes": [
            _process_row(p, {row.model_id for _, row in models}, changeable) for p in known.processes
        ],
        "targets": [p for p in known.live if p.reporting or p.this],
        "models": [_model_row(task, row, known, changeable) for task, row in models],
        "commands": rows,
        "refresh": _REFRESH_SECONDS if any(r["pending"] for r in rows) else 0,
        "all": ALL,
        "gone_after": processes.GONE_AFTER_BEATS,
    }
    return TemplateResponse(request, "admin/model_cache.html", context)


def _act(request: HttpRequest) -> None:
    """Carry out one button: load or unload a model here and now, and/or send it to other processes."""
    action, model_id, target = (request.POST.get(k, "") for k in ("action", "model_id", "target"))
    if action not in (CacheCommand.LOAD, CacheCommand.UNLOAD) or not model_id:
        messages.error(request, "Choose a model to load or unload.")
        return
    row = processes.registry_row(model_id)
    if not _may_change(request, row):
        raise PermissionDenied  # acting on a model needs the change permission on its own task's models
    if action == CacheCommand.LOAD and row is None:
        messages.error(request, f"No model {model_id!r} in the registry.")
        return
    known = fleet.read(fresh=True)
    here = next(p for p in known.processes if p.this)
    if target == ALL:
        act_here, others = True, known.others
    elif target == here.id:
        act_here, others = True, []
    else:
        process = known.get(target)
        if process is None or not process.live:
            messages.error(request, "That server process is gone; nothing was sent.")
            return
        act_here, others = False, [process]
    if act_here:
        ok, result = fleet.act_here(action=action, model_id=model_id)
        messages.add_message(
            request,
            messages.SUCCESS if ok else messages.ERROR,
            f"{action.capitalize()} {model_id} on {here.name} (this process): {result}",
        )
    if others:
        fleet.send(
            action=action,
            model_id=model_id,
            targets=[p.id for p in others],
            requested_by=request.user.get_username(),
        )
        names = ", ".join(p.name for p in others)
        messages.info(request, f"Sent {action} {model_id} to {names}; the answers appear below.")


def _registry_models() -> list[tuple[str, Any]]:
    stt = [("speech to text", row) for row in SpeechToTextModel.objects.order_by("model_id")]
    tts = [("text to speech", row) for row in TextToSpeechModel.objects.order_by("model_id")]
    return stt + tts


def _may_change(request: HttpRequest, row: SpeechModel | None) -> bool:
    """Whether the user may load or unload `row`: the change permission on its task's models; a
    model the registry no longer has (only ever unloaded), on either task's."""
    if row is None:
        return any(request.user.has_perm(f"registry.change_{m}") for m in _MODEL_NAMES)
    return request.user.has_perm(f"registry.change_{row._meta.model_name}")


def _changeable(request: HttpRequest, models: list[tuple[str, Any]]) -> Callable[[str], bool]:
    """Whether the page offers buttons for a model id (the POST checks again)."""
    by_id = {row.model_id: _may_change(request, row) for _, row in models}
    others = _may_change(request, None)
    return lambda model_id: by_id.get(model_id, others)


def _model_row(task: str, row: Any, known: fleet.Fleet, changeable: Callable[[str], bool]) -> dict[str, Any]:
    across = known.across(row.model_id)
    return {
        "model_id": row.model_id,
        "task": task,
        "enabled": row.enabled,
        "state": across.state,
        "loaded": bool(across.where("loaded")),
        "changeable": changeable(row.model_id),
    }


def _process_row(
    process: fleet.ProcessView, registered: set[str], changeable: Callable[[str], bool]
) -> dict[str, Any]:
    # A failure is remembered per model id; once that model is gone from the registry it is noise.
    shown = [m for m in process.models if m.state != "failed" or m.model_id in registered]
    return {
        "process": process,
        "status": "this process" if process.this else "live" if process.live else "gone",
        "since": _ago(process.heartbeat) if process.heartbeat else "not reporting",
        "memory": megabytes(process.memory_bytes),
        "models": [
            {
                "model": m,
                "memory": megabytes(m.memory_bytes),
                "ready": m.state == "loaded",
                "changeable": changeable(m.model_id),
            }
            for m in shown
        ],
    }


def _command_row(command: CacheCommand, names: dict[str, str], live: set[str]) -> dict[str, Any]:
    if command.done_at is not None:
        state = "done" if command.ok else "failed"
    elif command.target not in live:
        state = "not answered: the process is gone"
    elif command.taken_at is not None:
        state = "running"
    elif timezone.now() - command.created > _UNANSWERED_AFTER:
        state = "not taken yet"
    else:
        state = "sent"
    return {
        "command": command,
        "process": names.get(command.target, command.target.rsplit(":", 1)[0]),
        "state": state,
        "pending": state in ("sent", "running"),
    }


def megabytes(count: int) -> str:
    return f"{count / 2**20:,.0f} MiB" if count else ""


def _ago(moment: datetime) -> str:
    seconds = max(0.0, (timezone.now() - moment).total_seconds())
    return f"{seconds:.0f} s ago" if seconds < 120 else f"{seconds / 60:.0f} min ago"


extra_page(
    "model-cache/",
    model_cache_view,
    name="model-cache",
    title="Model cache",
    # Seeing it is for who may see speech models (change implies view, as in the admin's own pages).
    permissions=tuple(f"registry.{verb}_{m}" for m in _MODEL_NAMES for verb in ("view", "change")),
)
