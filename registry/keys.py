"""Client API key secrets (hashed, never stored) and upstream keys (encrypted at rest)."""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import re
import secrets

from cryptography.fernet import Fernet, InvalidToken
from django.conf import settings

SECRET_PREFIX = "vp-"  # noqa: S105 - the public marker of our keys, not a secret
PREFIX_LENGTH = 12  # "vp-" + 9 characters: shown in lists and logs, enough to tell keys apart


def new_secret() -> str:
    return SECRET_PREFIX + secrets.token_urlsafe(32)


def prefix_of(secret: str) -> str:
    return secret[:PREFIX_LENGTH]


def hash_secret(secret: str) -> str:
    # The secret has 256 bits of entropy: a plain SHA-256 cannot be brute-forced, and it keeps
    # the per-request lookup a single indexed query (a slow KDF would cost every request).
    return hashlib.sha256(secret.encode()).hexdigest()


def secrets_match(secret: str, digest: str) -> bool:
    return hmac.compare_digest(hash_secret(secret), digest)


def _fernet() -> Fernet:
    # A dedicated key derived from SECRET_KEY, so the upstream keys are not encrypted with the
    # same bytes Django signs sessions with.
    derived = hashlib.sha256(b"voiceproxy.upstream-key:" + settings.SECRET_KEY.encode()).digest()
    return Fernet(base64.urlsafe_b64encode(derived))


def encrypt(plaintext: str) -> str:
    return _fernet().encrypt(plaintext.encode()).decode() if plaintext else ""


class UndecryptableKey(Exception):
    """The stored key was encrypted under another SECRET_KEY."""


def decrypt(token: str) -> str:
    if not token:
        return ""
    try:
        return _fernet().decrypt(token.encode()).decode()
    except InvalidToken as exc:
        raise UndecryptableKey("the upstream key cannot be decrypted: was SECRET_KEY changed?") from exc


FRAGMENT = 8  # this many characters of a secret in a row are taken for the secret


@functools.lru_cache(maxsize=64)
def _secret_pattern(secret: str) -> re.Pattern[str]:
    """The secret, its masked forms (`sk-MARKE****W7xY`: the first 8 and last 4 around stars or dots)
    and any run of FRAGMENT or more of its characters that is not a plain word (a key that holds
    "upstream" must not blank that word out of every message; its "sk-upstr" prefix does go)."""
    windows = {secret[i : i + FRAGMENT] for i in range(len(secret) - FRAGMENT + 1)}
    windows = {window for window in windows if not window.isalpha()}
    masked = re.escape(secret[:FRAGMENT]) + r"[*.…•x]{2,}" + re.escape(secret[-4:])
    fragments = "|".join(sorted(map(re.escape, windows), key=len, reverse=True))
    return re.compile(f"{re.escape(secret)}|{masked}" + (f"|(?:{fragments})+" if fragments else ""))


def redact(text: str, secret: str, replacement: str) -> str:
    """`text` without `secret`, should a server echo it back whole, masked or in part (OpenAI's 401s
    quote a masked key). Redact before any truncation: a cut key is still a key."""
    if not secret or not text:
        return text
    if len(secret) < FRAGMENT:
        return text.replace(secret, replacement)
    return _secret_pattern(secret).sub(replacement, text)
