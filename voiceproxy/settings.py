"""Settings for voiceproxy, read once from the environment.

This module is the only reader of `os.environ`. Every `VOICEPROXY_*` knob has a default and a
line in README.md. Secrets may come from `NAME_FILE` (a path), as Docker secrets do.
"""

from __future__ import annotations

import os
import re
import secrets
import socket
import time
from datetime import timedelta
from pathlib import Path

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

import voiceproxy

BASE_DIR = Path(__file__).resolve().parent.parent


def env_str(name: str, default: str = "") -> str:
    file_path = os.environ.get(f"{name}_FILE")
    if file_path:
        try:
            return Path(file_path).read_text().strip()
        except OSError as exc:
            raise ImproperlyConfigured(f"{name}_FILE={file_path!r} cannot be read: {exc}") from exc
    return os.environ.get(name, default)


def env_int(name: str, default: int, *, minimum: int | None = None) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError as exc:
        raise ImproperlyConfigured(f"{name} must be an integer, got {raw!r}") from exc
    if minimum is not None and value < minimum:
        raise ImproperlyConfigured(f"{name} must be at least {minimum}, got {value}")
    return value


def env_float(name: str, default: float, *, minimum: float | None = None) -> float:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError as exc:
        raise ImproperlyConfigured(f"{name} must be a number, got {raw!r}") from exc
    if minimum is not None and value < minimum:
        raise ImproperlyConfigured(f"{name} must be at least {minimum}, got {value}")
    return value


def env_bool(name: str, default: bool) -> bool:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    lowered = raw.strip().lower()
    if lowered in {"1", "true", "yes", "on"}:
        return True
    if lowered in {"0", "false", "no", "off"}:
        return False
    raise ImproperlyConfigured(f"{name} must be true or false, got {raw!r}")


DATA_DIR = Path(env_str("VOICEPROXY_DATA_DIR", str(BASE_DIR / "data"))).resolve()
DATA_DIR.mkdir(parents=True, exist_ok=True)


def _secret_key() -> str:
    """SECRET_KEY from the environment, else one generated once and kept in the data dir.

    Upstream API keys are encrypted with a key derived from it, so it must not change between
    restarts: a random per-process default would make every stored upstream key unreadable.
    """
    configured = env_str("SECRET_KEY")
    if configured:
        return configured
    key_file = DATA_DIR / "secret_key"
    try:
        # O_EXCL: of several processes starting at once, one writes it and the others read it;
        # 0o600 from the start, never world-readable for a moment.
        fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        pass
    else:
        with os.fdopen(fd, "w") as handle:
            handle.write(secrets.token_urlsafe(50))
    for _ in range(50):
        value = key_file.read_text().strip()
        if value:
            return value
        time.sleep(0.1)  # another process created it a moment ago and is still writing
    raise ImproperlyConfigured(f"{key_file} is empty: remove it or set SECRET_KEY.")


SECRET_KEY = _secret_key()
DEBUG = env_bool("VOICEPROXY_DEBUG", False)
ALLOWED_HOSTS = [h.strip() for h in env_str("VOICEPROXY_ALLOWED_HOSTS", "*").split(",") if h.strip()]
CSRF_TRUSTED_ORIGINS = [o.strip() for o in env_str("VOICEPROXY_CSRF_TRUSTED_ORIGINS").split(",") if o.strip()]

INSTALLED_APPS = [
    "daphne",
    "registry.apps.VoiceproxyAdminConfig",  # django.contrib.admin with our site (dashboard...)
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "channels",
    "rest_framework",
    "adrf",
    "drf_spectacular",
    "drf_spectacular_sidecar",  # Swagger UI and ReDoc as static files (/docs/): no CDN
    "axes",
    "registry",
    "chat",
]

MIDDLEWARE = [
    # First, so every /v1/ request gets its id and audit row, whatever fails after it.
    "registry.api.middleware.AuditMiddleware",
    # /v1/ only: ALLOWED_HOSTS, the body-size limit, the headers Django's own would add.
    "registry.api.middleware.ApiGuardMiddleware",
    # /static/ (admin, playground, docs): compressed, cached, async (no thread hop for the rest).
    "servestatic.middleware.ServeStaticMiddleware",
    # Django's own, for the admin and the rest of the site; /v1/ passes them by
    # (registry/api/site_middleware.py).
    "registry.api.site_middleware.SiteSecurityMiddleware",
    "registry.api.site_middleware.SiteSessionMiddleware",
    "registry.api.site_middleware.SiteCommonMiddleware",
    "registry.api.site_middleware.SiteCsrfViewMiddleware",
    "registry.api.site_middleware.SiteAuthenticationMiddleware",
    "registry.api.site_middleware.SiteMessageMiddleware",
    "registry.api.site_middleware.SiteXFrameOptionsMiddleware",
    # django-axes turns a locked-out admin login into the lockout page; last, as its docs ask.
    # Not wrapped in SiteOnly: it is async-native, and on /v1/ it is one attribute check (no
    # thread hop); its own system check looks for it by name.
    "axes.middleware.AxesMiddleware",
]
# The admin's checks look for Django's session, auth and messages middleware by class; they are
# there, wrapped by registry.api.site_middleware.SiteOnly.
SILENCED_SYSTEM_CHECKS = ["admin.E408", "admin.E409", "admin.E410"]

# django-axes first: it refuses a locked-out client before any password is checked.
AUTHENTICATION_BACKENDS = [
    "axes.backends.AxesStandaloneBackend",
    "django.contrib.auth.backends.ModelBackend",
]

ROOT_URLCONF = "voiceproxy.urls"
ASGI_APPLICATION = "voiceproxy.asgi.application"
WSGI_APPLICATION = None

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        # First: registry's admin/base_site.html overrides Django's (the admin app precedes registry).
        "DIRS": [BASE_DIR / "registry" / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

DATABASES = {
    "default": dj_database_url.parse(
        env_str("DATABASE_URL", f"sqlite:///{DATA_DIR / 'voiceproxy.sqlite3'}"),
        # Under ASGI each request may run its ORM calls on another thread: persistent
        # connections would pile up one per thread, so close them after each request.
        conn_max_age=0,
    )
}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # WAL lets the audit writes and reads of concurrent requests overlap; the timeout makes
    # a writer wait for the lock instead of failing with "database is locked".
    DATABASES["default"].setdefault("OPTIONS", {}).update(
        {"timeout": 20, "init_command": "PRAGMA journal_mode=WAL;", "transaction_mode": "IMMEDIATE"}
    )
    DATABASES["default"]["TEST"] = {"NAME": str(DATA_DIR / "test.sqlite3")}

REDIS_URL = env_str("REDIS_URL")
if REDIS_URL:
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.redis.RedisCache", "LOCATION": REDIS_URL}}
else:
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True
STATIC_URL = "/static/"
# A new API key's secret is shown once through a message: keep it server-side, not in a cookie.
MESSAGE_STORAGE = "django.contrib.messages.storage.session.SessionStorage"
STATIC_ROOT = DATA_DIR / "static"
# Served from the apps' static folders as they are (no collectstatic step needed); `collectstatic`
# adds pre-compressed copies that ServeStatic sends to clients that accept them.
SERVESTATIC_USE_FINDERS = True
SERVESTATIC_MAX_AGE = 3600
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "servestatic.storage.CompressedStaticFilesStorage"},
}

# --- the gateway's own knobs (each documented in README.md) ---
VOICEPROXY_ALLOW_ANONYMOUS = env_bool("VOICEPROXY_ALLOW_ANONYMOUS", False)
VOICEPROXY_MAX_BODY_BYTES = env_int("VOICEPROXY_MAX_BODY_BYTES", 26 * 1024 * 1024, minimum=1024)
VOICEPROXY_MAX_AUDIO_BYTES = env_int("VOICEPROXY_MAX_AUDIO_BYTES", 25 * 1024 * 1024, minimum=1024)
VOICEPROXY_MAX_AUDIO_SECONDS = env_float("VOICEPROXY_MAX_AUDIO_SECONDS", 1800.0, minimum=1.0)
VOICEPROXY_INFERENCE_THREADS = env_int("VOICEPROXY_INFERENCE_THREADS", 2, minimum=1)
# CPU threads of one engine call (CTranslate2, onnxruntime, torch): all the cores when it runs alone;
# when other pool work runs beside it, the cores divided among the worker threads (for the engines
# that can switch per call: Piper, Kokoro), so that both together do not oversubscribe the machine.
CPU_CORES = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
VOICEPROXY_ENGINE_THREADS = env_int("VOICEPROXY_ENGINE_THREADS", CPU_CORES, minimum=1)
VOICEPROXY_ENGINE_THREADS_SHARED = env_int(
    "VOICEPROXY_ENGINE_THREADS_SHARED", max(1, CPU_CORES // VOICEPROXY_INFERENCE_THREADS), minimum=1
)
VOICEPROXY_QUEUE_LIMIT = env_int("VOICEPROXY_QUEUE_LIMIT", 32, minimum=0)
# A reply's first sentence, when the pool is busy as it starts, is spoken in two parts: its first
# phrase alone, then the rest after other requests' first sounds (registry/speech/text.lead_in).
VOICEPROXY_LEAD_IN = env_bool("VOICEPROXY_LEAD_IN", True)
# Failed API-key checks one client address may make per minute before it gets 429s (0: no limit).
VOICEPROXY_AUTH_FAILURES_PER_MINUTE = env_int("VOICEPROXY_AUTH_FAILURES_PER_MINUTE", 60, minimum=0)
VOICEPROXY_MODEL_CACHE_SIZE = env_int("VOICEPROXY_MODEL_CACHE_SIZE", 4, minimum=1)
VOICEPROXY_MODEL_TTL = env_int("VOICEPROXY_MODEL_TTL", 900, minimum=0)
# Memory the model cache may fill per device ("cpu=6GiB,cuda=20GiB", or one size for every device;
# empty: no budget, VOICEPROXY_MODEL_CACHE_SIZE alone). Past it, least recently used idle models are
# unloaded; a model larger than its device's budget is refused (registry/speech/memory.py).
VOICEPROXY_MODEL_MEMORY = env_str("VOICEPROXY_MODEL_MEMORY", "")
# Models (ids or aliases, comma-separated) each server process loads as it starts, so the first
# request of the day does not wait for a cold load; /health/ready says "preloading" until they are in.
VOICEPROXY_PRELOAD_MODELS = [
    m.strip() for m in env_str("VOICEPROXY_PRELOAD_MODELS", "").split(",") if m.strip()
]
VOICEPROXY_MODELS_DIR = Path(env_str("VOICEPROXY_MODELS_DIR", str(DATA_DIR / "models")))
VOICEPROXY_AUDIO_TTL = env_int("VOICEPROXY_AUDIO_TTL", 3600, minimum=60)
VOICEPROXY_MAX_CHOICES = env_int("VOICEPROXY_MAX_CHOICES", 4, minimum=1)
VOICEPROXY_MAX_TTS_CHARS = env_int("VOICEPROXY_MAX_TTS_CHARS", 4096, minimum=1)
# A voice chat's spoken reply stops at the last sentence that ends within this many characters
# (finish_reason "length"): an upstream that rambles cannot hold a worker for minutes.
VOICEPROXY_MAX_SPOKEN_CHARS = env_int("VOICEPROXY_MAX_SPOKEN_CHARS", 4096, minimum=100)
# Realtime (/v1/realtime): live sessions at once per process and per key, and how long one may last.
VOICEPROXY_REALTIME_MAX_SESSIONS = env_int("VOICEPROXY_REALTIME_MAX_SESSIONS", 16, minimum=1)
VOICEPROXY_REALTIME_MAX_SESSIONS_PER_KEY = env_int("VOICEPROXY_REALTIME_MAX_SESSIONS_PER_KEY", 4, minimum=1)
VOICEPROXY_REALTIME_IDLE_SECONDS = env_int("VOICEPROXY_REALTIME_IDLE_SECONDS", 600, minimum=1)
VOICEPROXY_REALTIME_MAX_SECONDS = env_int("VOICEPROXY_REALTIME_MAX_SECONDS", 3600, minimum=1)
# SIGTERM: stop accepting, let in-flight requests finish for up to this many seconds, write every
# audit row, then exit.
VOICEPROXY_DRAIN_SECONDS = env_int("VOICEPROXY_DRAIN_SECONDS", 30, minimum=0)
VOICEPROXY_LOG_LEVEL = env_str("VOICEPROXY_LOG_LEVEL", "INFO").upper()
# The operator's seat (issue 17). Audit rows older than this many days are deleted by
# `manage.py pruneaudit` (run it from cron); 0 keeps them for ever.
VOICEPROXY_AUDIT_RETENTION_DAYS = env_int("VOICEPROXY_AUDIT_RETENTION_DAYS", 90, minimum=0)
# /metrics (Prometheus): open to these client addresses (comma-separated IPs or networks), and to
# any client that sends `Authorization: Bearer <VOICEPROXY_METRICS_TOKEN>` when a token is set.
VOICEPROXY_METRICS_ALLOW = [
    a.strip() for a in env_str("VOICEPROXY_METRICS_ALLOW", "127.0.0.1,::1").split(",") if a.strip()
]
VOICEPROXY_METRICS_TOKEN = env_str("VOICEPROXY_METRICS_TOKEN", "")
# Where every process writes its metrics for /metrics to merge (registry/metrics.py): one directory
# per host, since its files are named by pid and containers sharing the data volume (replicas) each
# have their own pids (often 1). prometheus_client picks its multi-process mode from
# PROMETHEUS_MULTIPROC_DIR when it is first imported, which is after this module (nothing imports it
# before Django is set up); set here, not with setdefault, so that a process never inherits another's
# directory from its parent (a test runner starting servers).
_HOST = re.sub(r"[^A-Za-z0-9._-]", "_", socket.gethostname()) or "localhost"
VOICEPROXY_METRICS_DIR = Path(env_str("VOICEPROXY_METRICS_DIR", str(DATA_DIR / "metrics" / _HOST))).resolve()
VOICEPROXY_METRICS_DIR.mkdir(parents=True, exist_ok=True)
os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(VOICEPROXY_METRICS_DIR)
# Logs: "text" (one readable line per event) or "json" (one JSON object per line, with the request id).
VOICEPROXY_LOG_FORMAT = env_str("VOICEPROXY_LOG_FORMAT", "text").lower()
if VOICEPROXY_LOG_FORMAT not in ("text", "json"):
    raise ImproperlyConfigured(f"VOICEPROXY_LOG_FORMAT must be text or json, got {VOICEPROXY_LOG_FORMAT!r}")
# Every server process reports its model cache to the database this often (seconds); a process not
# heard from for three beats is shown as gone.
VOICEPROXY_HEARTBEAT_SECONDS = env_float("VOICEPROXY_HEARTBEAT_SECONDS", 5.0, minimum=0.5)
# Wyoming (Home Assistant's speech protocol, `manage.py wyoming`): client addresses (IPs or networks,
# comma-separated) it answers; the protocol has no authentication of its own.
VOICEPROXY_WYOMING_ALLOW = [
    a.strip() for a in env_str("VOICEPROXY_WYOMING_ALLOW", "127.0.0.1,::1").split(",") if a.strip()
]
# Failed admin logins from one client address before it is locked out, and for how long.
VOICEPROXY_ADMIN_LOGIN_FAILURES = env_int("VOICEPROXY_ADMIN_LOGIN_FAILURES", 5, minimum=1)
VOICEPROXY_ADMIN_LOCKOUT_MINUTES = env_int("VOICEPROXY_ADMIN_LOCKOUT_MINUTES", 15, minimum=1)

# --- the admin login lockout: django-axes ---
# Attempts live in the database (the default handler, migrations in `axes`): every process and
# `manage.py axes_reset*` see the same counts on SQLite and on PostgreSQL, with or without Redis.
AXES_FAILURE_LIMIT = VOICEPROXY_ADMIN_LOGIN_FAILURES
AXES_COOLOFF_TIME = timedelta(minutes=VOICEPROXY_ADMIN_LOCKOUT_MINUTES)
# Per client address, whatever usernames it tries: that also bounds any (username, address) pair,
# since axes applies one limit to every parameter set. Never per username alone, or anyone could
# lock the administrators out from anywhere.
AXES_LOCKOUT_PARAMETERS = ["ip_address"]
AXES_RESET_ON_SUCCESS = True
# Attempts made while locked out are refused without being counted, so the lockout ends when
# Retry-After says, however often the client retries meanwhile.
AXES_RESET_COOL_OFF_ON_FAILURE_DURING_LOCKOUT = False
AXES_HTTP_RESPONSE_CODE = 429
AXES_LOCKOUT_CALLABLE = "registry.api.site_middleware.admin_lockout_response"
# The connection's address only (were django-ipware installed, it would read no forwarded
# header either); behind nginx, daphne --proxy-headers sets REMOTE_ADDR from X-Forwarded-For.
AXES_IPWARE_META_PRECEDENCE_ORDER = ("REMOTE_ADDR",)

# Django refuses larger bodies itself (RequestDataTooBig); our audit middleware answers first
# with a 413 in the OpenAI shape, from Content-Length.
DATA_UPLOAD_MAX_MEMORY_SIZE = VOICEPROXY_MAX_BODY_BYTES
FILE_UPLOAD_MAX_MEMORY_SIZE = VOICEPROXY_MAX_BODY_BYTES

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": ["registry.api.auth.ApiKeyAuthentication"],
    "DEFAULT_PERMISSION_CLASSES": ["registry.api.auth.HasApiKey"],
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "DEFAULT_PARSER_CLASSES": [
        "registry.api.parsers.CheckedJSONParser",
        "rest_framework.parsers.MultiPartParser",
        "rest_framework.parsers.FormParser",
    ],
    "EXCEPTION_HANDLER": "registry.api.errors.drf_exception_handler",
    "DEFAULT_CONTENT_NEGOTIATION_CLASS": "registry.api.negotiation.IgnoreAccept",
    "UNAUTHENTICATED_USER": None,
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
}

SPECTACULAR_SETTINGS = {
    "TITLE": "voiceproxy",
    "DESCRIPTION": "OpenAI-compatible voice gateway: speech to text, text to speech, voice chat.",
    "VERSION": voiceproxy.__version__,
    "SERVE_INCLUDE_SCHEMA": False,
    "SCHEMA_PATH_PREFIX": r"/v1",
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    "POSTPROCESSING_HOOKS": [
        "drf_spectacular.hooks.postprocess_schema_enums",
        "registry.api.schema.document_errors",  # error statuses; the Realtime endpoint
    ],
    "ENUM_NAME_OVERRIDES": {
        "TranscriptionFormat": ["json", "text", "srt", "verbose_json", "vtt"],
        "SpeechFormat": ["mp3", "opus", "aac", "flac", "wav", "pcm"],
    },
}

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {
        "text": {"format": "%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s"},
        # One JSON object per line: timestamp (ISO 8601, UTC), level, logger, request_id, message,
        # and exception (the traceback) when there is one; fields passed with `extra=` too.
        "json": {
            "()": "pythonjsonlogger.json.JsonFormatter",
            "fmt": "%(levelname)s %(name)s %(request_id)s %(message)s",
            "rename_fields": {"levelname": "level", "name": "logger", "exc_info": "exception"},
            "timestamp": True,
        },
    },
    "filters": {"request_id": {"()": "registry.audit.RequestIdFilter"}},
    "handlers": {
        "console": {
            "class": "logging.StreamHandler",
            "formatter": VOICEPROXY_LOG_FORMAT,
            "filters": ["request_id"],
        }
    },
    "root": {"handlers": ["console"], "level": VOICEPROXY_LOG_LEVEL},
    "loggers": {"django": {"handlers": ["console"], "level": "WARNING", "propagate": False}},
}
