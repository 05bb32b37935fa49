"""Who may open a Realtime session, on which model, and whether there is room for it.

    admit()          a handshake's key (Bearer header, `openai-insecure-api-key.` subprotocol, or a
                     client secret), model and intent -> an `Admission`, or an OpenAIError whose
                     status the handshake is refused with
    mint_secret()    POST /v1/realtime/client_secrets: a short-lived `ek_` secret for a browser,
                     standing for the key that minted it and the session it configured

Client secrets are registry/client_secrets.py's; the key they stand for is checked again when used.
Concurrent sessions are counted per process (VOICEPROXY_REALTIME_MAX_SESSIONS), and per key across
every replica (VOICEPROXY_REALTIME_MAX_SESSIONS_PER_KEY, through registry/shared_counts.py).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from django.conf import settings

from chat import upstream
from chat.realtime.config import Kind, SessionConfig, new_config
from chat.realtime.conversation import new_id
from registry import access, catalog, client_secrets, metrics, shared_counts
from registry.errors import InvalidRequest, SessionsFull, TooManySessions
from registry.models import ApiKey
from registry.speech import workers

logger = logging.getLogger(__name__)

SUBPROTOCOL_KEY = "openai-insecure-api-key."
SECRET_SECONDS_DEFAULT = 600
SECRET_SECONDS_RANGE = (10, 7200)

_open = {"sessions": 0}  # open sessions in this process (a key's are counted across replicas)


@dataclass
class Admission:
    api_key: ApiKey | None
    config: SessionConfig
    subprotocol: str | None
    defaults: dict[str, Any] = field(default_factory=dict)  # a client secret's session, applied first
    reservation: workers.Reservation | None = None
    _counted: str | None = None
    _holder: str = ""  # its lease among the key's places (the session id)

    async def release(self) -> None:
        """Give the session's places back (once): in this process, the pool's, the key's across
        replicas. Never raises: a cache that cannot be reached leaves the key's lease to expire."""
        if self.reservation is not None:
            workers.release(self.reservation)
            self.reservation = None
        if self._counted is None:
            return
        who, self._counted = self._counted, None
        _open["sessions"] -= 1
        metrics.realtime_sessions(open_sessions())
        try:
            await shared_counts.give_back(_key_sessions(who), self._holder)
        except Exception:
            logger.warning(
                "could not give back %s's Realtime place; its lease will expire", who, exc_info=True
            )


def open_sessions() -> int:
    return _open["sessions"]


def _token(headers: dict[str, str], subprotocols: list[str]) -> tuple[str, str | None]:
    """The key the client sent, and the subprotocol to answer with (a browser must get one of its own)."""
    scheme, _, token = headers.get("authorization", "").partition(" ")
    chosen = None
    for protocol in subprotocols:
        if protocol.startswith(SUBPROTOCOL_KEY) and not token:
            token, scheme = protocol[len(SUBPROTOCOL_KEY) :], "bearer"
        elif not protocol.startswith(SUBPROTOCOL_KEY) and chosen is None:
            chosen = protocol  # "realtime", as OpenAI's browser examples offer
    if headers.get("authorization") and (scheme.lower() != "bearer" or not token.strip()):
        raise access.refused("The Authorization header must be 'Bearer YOUR_API_KEY'.")
    return token.strip(), chosen


async def _key(token: str, client: str) -> tuple[ApiKey | None, dict[str, Any]]:
    if not token:
        if settings.VOICEPROXY_ALLOW_ANONYMOUS:
            return None, {}
        raise access.refused(
            "You didn't provide an API key. Send 'Authorization: Bearer YOUR_API_KEY', the subprotocol "
            f"'{SUBPROTOCOL_KEY}YOUR_API_KEY', or a client secret from /v1/realtime/client_secrets."
        )
    if not client_secrets.is_client_secret(token):
        return await access.aauthenticate(token, client=client), {}
    minted = await client_secrets.aredeem(token)
    if minted is None:
        raise access.refused("The client secret is unknown or has expired.")
    if minted.key_hash is None:  # minted where no key was needed: only while none is
        if not settings.VOICEPROXY_ALLOW_ANONYMOUS:
            raise access.refused("The client secret is unknown or has expired.")
        return None, minted.session
    return await access.aauthenticate(token, client=client), minted.session


async def admit(
    *, headers: dict[str, str], subprotocols: list[str], query: dict[str, str], client: str
) -> Admission:
    """Check a handshake. Raises AuthenticationFailed (401), PermissionDenied (403), ModelNotFound
    (404), InvalidRequest (400), RateLimited (429: the key's sessions) and ServerBusy (503)."""
    token, subprotocol = _token(headers, subprotocols)
    api_key, defaults = await _key(token, client)
    kind: Kind = "transcription" if query.get("intent") == "transcription" else "realtime"
    if defaults.get("type") == "transcription":
        kind = "transcription"
    model = query.get("model") or defaults.get("model") or ""
    if kind == "realtime":
        if not model:
            raise InvalidRequest(
                "Name the chat model: /v1/realtime?model=NAME.", param="model", code="missing_model"
            )
        await check_model(api_key, model)
    config = new_config(
        session_id=new_id("sess"),
        model=model,
        kind=kind,
        max_seconds=settings.VOICEPROXY_REALTIME_MAX_SECONDS,
    )
    admission = Admission(api_key=api_key, config=config, subprotocol=subprotocol, defaults=defaults)
    who = api_key.prefix if api_key is not None else ""
    if open_sessions() >= settings.VOICEPROXY_REALTIME_MAX_SESSIONS:
        raise SessionsFull(
            f"This server holds its maximum of {settings.VOICEPROXY_REALTIME_MAX_SESSIONS} Realtime "
            "sessions; retry shortly.",
            retry_after=5,
        )
    per_key = settings.VOICEPROXY_REALTIME_MAX_SESSIONS_PER_KEY
    # Counted across replicas (the cache is Redis in production), and for as long as a session may last.
    holder = config.id
    if not await shared_counts.take(
        _key_sessions(who), holder, limit=per_key, ttl=settings.VOICEPROXY_REALTIME_MAX_SECONDS + 60
    ):
        raise TooManySessions(
            f"This key already holds {per_key} Realtime sessions; close one first.", retry_after=5
        )
    try:
        # The session's place in the worker pool: its transcriptions and speech are never refused midway.
        admission.reservation = workers.reservation()
    except BaseException:
        await shared_counts.give_back(_key_sessions(who), holder)
        raise
    _open["sessions"] += 1
    admission._counted, admission._holder = who, holder
    metrics.realtime_sessions(open_sessions())
    return admission


def _key_sessions(who: str) -> str:
    return f"realtime-sessions:{who or '(anonymous)'}"


async def check_model(api_key: ApiKey | None, model: str, *, param: str = "model") -> upstream.Target:
    """A chat model this key may use, routed (ModelNotFound, PermissionDenied, InvalidRequest)."""
    await catalog.check_chat_model(model, param=param)
    access.check_model_allowed(api_key, [model], param=param)
    return await upstream.route(model, param=param)


async def mint_secret(*, api_key: ApiKey | None, data: Any) -> dict[str, Any]:
    """POST /v1/realtime/client_secrets: `{expires_after: {anchor, seconds}, session}` -> `{value,
    expires_at, session}`. The session is checked as a `session.update` would be (InvalidRequest)."""
    if not isinstance(data, dict):
        raise InvalidRequest("The request body must be a JSON object.", param="body")
    expires = data.get("expires_after") or {}
    if not isinstance(expires, dict):
        raise InvalidRequest("'expires_after' must be an object.", param="expires_after")
    if expires.get("anchor", "created_at") != "created_at":
        raise InvalidRequest("'expires_after.anchor' must be created_at.", param="expires_after.anchor")
    seconds = expires.get("seconds", SECRET_SECONDS_DEFAULT)
    low, high = SECRET_SECONDS_RANGE
    if isinstance(seconds, bool) or not isinstance(seconds, int) or not low <= seconds <= high:
        raise InvalidRequest(
            f"'expires_after.seconds' must be from {low} to {high}.", param="expires_after.seconds"
        )
    session = data.get("session") or {"type": "realtime"}
    if not isinstance(session, dict):
        raise InvalidRequest("'session' must be an object.", param="session")
    kind: Kind = "transcription" if session.get("type") == "transcription" else "realtime"
    model = session.get("model") or ""
    if kind == "realtime" and model:
        await check_model(api_key, model, param="session.model")
    config = new_config(
        session_id=new_id("sess"),
        model=model,
        kind=kind,
        max_seconds=settings.VOICEPROXY_REALTIME_MAX_SECONDS,
    )
    config = config.updated(session)  # InvalidRequest naming the field
    value, expires_at = await client_secrets.mint(api_key=api_key, seconds=seconds, session=session)
    return {"value": value, "expires_at": expires_at, "session": config.render()}
