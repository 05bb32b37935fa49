"""The registry: upstreams, client keys, speech models, voices, and the audit log."""

from __future__ import annotations

from typing import Any

from django.core.exceptions import ValidationError
from django.db import models
from django.db.models import F
from django.db.models.signals import post_delete, post_save
from django.utils import timezone

from registry import keys
from registry.speech.engines import ENGINE_TASKS

DEVICE_CHOICES = [("auto", "auto (CUDA when present)"), ("cpu", "CPU"), ("cuda", "CUDA")]


def _string_list(value: object, field: str) -> None:
    if not isinstance(value, list) or not all(isinstance(v, str) and v.strip() for v in value):
        raise ValidationError({field: "Must be a list of non-empty strings."})


class RegistryVersion(models.Model):
    """One row whose number goes up with every change to the registry, in the same transaction.

    Every server process keeps the registry in memory (registry/snapshot.py) and compares this
    number, once per /v1/ request, to know when to read it again. Saves and deletes of the
    registry's models bump it through signals, their querysets' bulk updates by `RegistryQuerySet`.
    """

    version = models.BigIntegerField(default=0)

    def __str__(self) -> str:
        return f"registry version {self.version}"


def bump_registry_version() -> None:
    if not RegistryVersion.objects.filter(pk=1).update(version=F("version") + 1):
        RegistryVersion.objects.get_or_create(pk=1, defaults={"version": 1})


# Bookkeeping that changes nothing a request is served by: no new version for it.
_UNVERSIONED_FIELDS = {"last_used", "updated"}


class RegistryQuerySet(models.QuerySet):
    """A queryset whose bulk writes bump the registry version (saves and deletes do through signals)."""

    def update(self, **kwargs: Any) -> int:
        count = super().update(**kwargs)
        if count and set(kwargs) - _UNVERSIONED_FIELDS:
            bump_registry_version()
        return count

    def bulk_create(self, *args: Any, **kwargs: Any) -> Any:
        created = super().bulk_create(*args, **kwargs)
        bump_registry_version()
        return created

    def bulk_update(self, *args: Any, **kwargs: Any) -> int:
        count = super().bulk_update(*args, **kwargs)
        bump_registry_version()
        return count


def _registry_changed(**kwargs: Any) -> None:
    bump_registry_version()


class Upstream(models.Model):
    """An OpenAI-compatible LLM API the chat proxy forwards to."""

    name = models.CharField(max_length=100, unique=True)
    base_url = models.URLField(max_length=500, help_text="e.g. http://127.0.0.1:11434/v1")
    api_key_encrypted = models.TextField(blank=True, default="", editable=False)
    timeout = models.FloatField(default=60.0, help_text="Seconds to wait for the upstream.")
    enabled = models.BooleanField(default=True)
    is_default = models.BooleanField(default=False, help_text="Serves chat models no other upstream lists.")
    chat_models = models.JSONField(
        default=list, blank=True, help_text='Chat model names routed here, e.g. ["llama3.2:1b"].'
    )
    created = models.DateTimeField(auto_now_add=True)
    updated = models.DateTimeField(auto_now=True)

    objects = RegistryQuerySet.as_manager()

    class Meta:
        ordering = ["name"]
        constraints = [
            models.UniqueConstraint(
                fields=["is_default"], condition=models.Q(is_default=True), name="one_default_upstream"
            )
        ]

    def __str__(self) -> str:
        return self.name

    def __repr__(self) -> str:  # never the key, not even encrypted
        return f"<Upstream {self.name} {self.base_url}>"

    @property
    def has_api_key(self) -> bool:
        return bool(self.api_key_encrypted)

    def set_api_key(self, plaintext: str) -> None:
        self.api_key_encrypted = keys.encrypt(plaintext)

    def get_api_key(self) -> str:
        return keys.decrypt(self.api_key_encrypted)

    def clean(self) -> None:
        _string_list(self.chat_models, "chat_models")
        if self.timeout <= 0:
            raise ValidationError({"timeout": "Must be positive."})


class ApiKey(models.Model):
    """A client key. Only its hash is stored; the secret is shown once, at creation."""

    name = models.CharField(max_length=100)
    prefix = models.CharField(max_length=keys.PREFIX_LENGTH, unique=True, editable=False)
    secret_hash = models.CharField(max_length=64, unique=True, editable=False)
    created = models.DateTimeField(auto_now_add=True)
    last_used = models.DateTimeField(null=True, blank=True, editable=False)
    expires_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)
    allowed_models = models.JSONField(
        default=list, blank=True, help_text="Model ids or aliases this key may use; empty: all."
    )
    rate_limit_per_minute = models.PositiveIntegerField(
        null=True, blank=True, help_text="Requests per minute; empty: unlimited."
    )

    objects = RegistryQuerySet.as_manager()

    class Meta:
        ordering = ["-created"]
        verbose_name = "API key"

    def __str__(self) -> str:
        return f"{self.name} ({self.prefix}…)"

    @classmethod
    def issue(cls, **fields: object) -> tuple[ApiKey, str]:
        """Create a key; returns it and its secret, which is never retrievable again."""
        secret = keys.new_secret()
        key = cls(prefix=keys.prefix_of(secret), secret_hash=keys.hash_secret(secret), **fields)
        key.full_clean()
        key.save()
        return key, secret

    @property
    def is_revoked(self) -> bool:
        return self.revoked_at is not None

    @property
    def is_expired(self) -> bool:
        return self.expires_at is not None and self.expires_at <= timezone.now()

    @property
    def is_active(self) -> bool:
        return not self.is_revoked and not self.is_expired

    def clean(self) -> None:
        _string_list(self.allowed_models, "allowed_models")


class SpeechModel(models.Model):
    """What speech-to-text and text-to-speech models share."""

    model_id = models.CharField(
        "model id", max_length=200, unique=True, help_text="What clients send as `model`."
    )
    engine = models.CharField(max_length=40)
    source = models.CharField(max_length=500, help_text="A hub repo id or a local path.")
    device = models.CharField(max_length=10, choices=DEVICE_CHOICES, default="auto")
    compute_type = models.CharField(
        max_length=20, default="auto", help_text="auto: float16 on CUDA, int8 on CPU (Whisper)."
    )
    enabled = models.BooleanField(default=True)
    is_default = models.BooleanField("default", default=False)
    idle_ttl = models.PositiveIntegerField(
        null=True, blank=True, help_text="Seconds kept loaded after last use; empty: the server default."
    )
    aliases = models.JSONField(
        default=list, blank=True, help_text='Other names clients may use, e.g. ["whisper-1"].'
    )
    created = models.DateTimeField(auto_now_add=True)
    updated = models.DateTimeField(auto_now=True)

    objects = RegistryQuerySet.as_manager()

    task = ""  # "stt" or "tts", set by the concrete models

    class Meta:
        abstract = True
        ordering = ["model_id"]

    def __str__(self) -> str:
        return self.model_id

    def clean(self) -> None:
        _string_list(self.aliases, "aliases")
        if self.model_id in self.aliases or len(set(self.aliases)) != len(self.aliases):
            raise ValidationError({"aliases": "An alias may not repeat the model id or another alias."})
        if ENGINE_TASKS.get(self.engine) != self.task:
            engines = sorted(e for e, t in ENGINE_TASKS.items() if t == self.task)
            raise ValidationError({"engine": f"Must be one of {', '.join(engines)}."})
        taken = _names_taken(exclude=self)
        for name in [self.model_id, *self.aliases]:
            if name in taken:
                raise ValidationError({"aliases": f"{name!r} already names another model."})


def _names_taken(*, exclude: SpeechModel | None = None) -> set[str]:
    """Every model id and alias in use, except `exclude`'s own."""
    names: set[str] = set()
    for model in (SpeechToTextModel, TextToSpeechModel):
        rows = model.objects.all()
        if exclude is not None and isinstance(exclude, model) and exclude.pk:
            rows = rows.exclude(pk=exclude.pk)
        for model_id, aliases in rows.values_list("model_id", "aliases"):
            names.add(model_id)
            names.update(aliases or [])
    return names


STT_ENGINES = [(e, e) for e, t in ENGINE_TASKS.items() if t == "stt"]
TTS_ENGINES = [(e, e) for e, t in ENGINE_TASKS.items() if t == "tts"]


class SpeechToTextModel(SpeechModel):
    task = "stt"
    engine = models.CharField(max_length=40, choices=STT_ENGINES, default="faster-whisper")

    class Meta(SpeechModel.Meta):
        verbose_name = "speech-to-text model"
        constraints = [
            models.UniqueConstraint(
                fields=["is_default"], condition=models.Q(is_default=True), name="one_default_stt"
            )
        ]


class TextToSpeechModel(SpeechModel):
    task = "tts"
    engine = models.CharField(max_length=40, choices=TTS_ENGINES, default="kokoro")

    class Meta(SpeechModel.Meta):
        verbose_name = "text-to-speech model"
        constraints = [
            models.UniqueConstraint(
                fields=["is_default"], condition=models.Q(is_default=True), name="one_default_tts"
            )
        ]


class Voice(models.Model):
    model = models.ForeignKey(TextToSpeechModel, on_delete=models.CASCADE, related_name="voices")
    name = models.CharField(max_length=100)
    source = models.CharField(
        max_length=500, blank=True, help_text="A file or hub path; empty: found in the model by name."
    )
    language = models.CharField(max_length=20, blank=True)
    aliases = models.JSONField(
        default=list, blank=True, help_text='OpenAI voice names mapped here, e.g. ["alloy"].'
    )
    enabled = models.BooleanField(default=True)

    objects = RegistryQuerySet.as_manager()

    class Meta:
        ordering = ["model__model_id", "name"]
        constraints = [models.UniqueConstraint(fields=["model", "name"], name="unique_voice_name")]

    def __str__(self) -> str:
        return f"{self.model.model_id}: {self.name}"

    def clean(self) -> None:
        _string_list(self.aliases, "aliases")
        if not self.model_id:
            return
        siblings = Voice.objects.filter(model_id=self.model_id).exclude(pk=self.pk)
        taken = {n for name, al in siblings.values_list("name", "aliases") for n in [name, *(al or [])]}
        for name in [self.name, *self.aliases]:
            if name in taken:
                raise ValidationError({"aliases": f"{name!r} already names another voice of this model."})


for _model in (Upstream, ApiKey, SpeechToTextModel, TextToSpeechModel, Voice):
    post_save.connect(_registry_changed, sender=_model, dispatch_uid=f"registry-version-{_model.__name__}")
    post_delete.connect(_registry_changed, sender=_model, dispatch_uid=f"registry-version-{_model.__name__}")


class RequestLog(models.Model):
    """One row per /v1/ request, failures and unauthenticated ones included."""

    created = models.DateTimeField(default=timezone.now, db_index=True)
    request_id = models.CharField(max_length=64, db_index=True)  # assigned by the server: unique
    # What the client sent as x-request-id, if anything: its own trace id, kept beside ours.
    client_request_id = models.CharField(max_length=64, blank=True, db_index=True)
    api_key = models.ForeignKey(ApiKey, null=True, blank=True, on_delete=models.SET_NULL)
    key_prefix = models.CharField(max_length=keys.PREFIX_LENGTH, blank=True, db_index=True)
    method = models.CharField(max_length=10)
    endpoint = models.CharField(max_length=200, db_index=True)
    # The endpoint's route, e.g. /v1/models/{model_id} (registry/routes.py): what the admin groups by.
    route = models.CharField(max_length=200, blank=True, default="")
    model_names = models.CharField(
        "models", max_length=500, blank=True, help_text="Models used, comma-separated."
    )
    status_code = models.PositiveSmallIntegerField(db_index=True)
    error_type = models.CharField(max_length=50, blank=True)
    error_code = models.CharField(max_length=50, blank=True)
    error_message = models.TextField(blank=True)
    duration_ms = models.FloatField(null=True, blank=True)
    stt_ms = models.FloatField(null=True, blank=True)
    llm_ms = models.FloatField(null=True, blank=True)
    llm_first_token_ms = models.FloatField(null=True, blank=True)
    tts_ms = models.FloatField(null=True, blank=True)
    tts_first_audio_ms = models.FloatField(null=True, blank=True)
    audio_seconds_in = models.FloatField(null=True, blank=True)
    audio_seconds_out = models.FloatField(null=True, blank=True)
    characters_in = models.PositiveIntegerField(null=True, blank=True)
    bytes_in = models.PositiveBigIntegerField(default=0)
    bytes_out = models.PositiveBigIntegerField(default=0)
    upstream = models.CharField(max_length=100, blank=True)
    upstream_status = models.PositiveSmallIntegerField(null=True, blank=True)
    stt_cache_hits = models.PositiveIntegerField(default=0)
    streamed = models.BooleanField(default=False)
    client_disconnected = models.BooleanField(default=False)
    reply_capped = models.BooleanField(
        default=False, help_text="The spoken reply reached VOICEPROXY_MAX_SPOKEN_CHARS and was cut short."
    )
    usage = models.JSONField(null=True, blank=True)
    # Realtime: the session a row belongs to (its own row and each of its responses'), and for
    # the session's row the user turns it heard.
    session_id = models.CharField(max_length=64, blank=True, db_index=True)
    turns = models.PositiveIntegerField(null=True, blank=True)

    class Meta:
        ordering = ["-created"]
        verbose_name = "request log entry"
        verbose_name_plural = "request log"
        # The admin's filters, each with the list's order, so a filtered page reads an index range.
        indexes = [
            models.Index(fields=["route", "-created"], name="requestlog_route_created"),
            models.Index(fields=["status_code", "-created"], name="requestlog_status_created"),
            models.Index(fields=["api_key", "-created"], name="requestlog_key_created"),
            models.Index(fields=["upstream", "-created"], name="requestlog_upstream_created"),
        ]

    def __str__(self) -> str:
        return f"{self.request_id} {self.method} {self.endpoint} {self.status_code}"


class ServerProcess(models.Model):
    """A server process and what its model cache holds, as it last reported (registry/processes.py).

    Each daphne process writes its own row at every heartbeat and deletes it when it stops cleanly;
    a row not refreshed for three of its heartbeats is a process gone (shown so, deleted later).
    """

    id = models.CharField(primary_key=True, max_length=100)  # unique per process start
    hostname = models.CharField(max_length=255)
    pid = models.PositiveIntegerField()
    version = models.CharField(max_length=40, blank=True)
    started = models.DateTimeField()
    heartbeat = models.DateTimeField(db_index=True)
    interval = models.FloatField(help_text="Seconds between its heartbeats.")
    memory_bytes = models.PositiveBigIntegerField(default=0, help_text="Resident memory of the process.")
    pool = models.JSONField(default=dict, blank=True)  # the inference pool's threads and load
    cache = models.JSONField(default=list, blank=True)  # one object per model in its cache

    class Meta:
        ordering = ["hostname", "started"]
        verbose_name = "server process"

    def __str__(self) -> str:
        return f"{self.hostname}:{self.pid}"


class CacheCommand(models.Model):
    """A "load" or "unload" of a model in one server process's cache, sent from the admin: that
    process takes it at its next poll (about a second), carries it out and writes the result here."""

    LOAD, UNLOAD = "load", "unload"

    target = models.CharField(max_length=100)  # a ServerProcess id (kept after the process is gone)
    action = models.CharField(max_length=10, choices=[(LOAD, "load"), (UNLOAD, "unload")])
    model_id = models.CharField(max_length=200)
    requested_by = models.CharField(max_length=150, blank=True)
    created = models.DateTimeField(default=timezone.now)
    taken_at = models.DateTimeField(null=True, blank=True)
    done_at = models.DateTimeField(null=True, blank=True)
    ok = models.BooleanField(null=True)
    result = models.TextField(blank=True)

    class Meta:
        ordering = ["-created"]
        # Each process asks for its own commands not yet taken, about once a second.
        indexes = [models.Index(fields=["target", "taken_at"], name="cachecommand_target_taken")]

    def __str__(self) -> str:
        return f"{self.action} {self.model_id} on {self.target}"
