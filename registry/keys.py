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


FRAGMENT = 8  # this many characters of a secret in a row are taken for the secret...
LETTERS_ALONE = 2 * FRAGMENT  # ...unless they are all letters (a word), then this many


@functools.lru_cache(maxsize=64)
def _patterns(secret: str) -> tuple[re.Pattern[str], re.Pattern[str]]:
    """Any FRAGMENT characters of the secret (a quick test: most text has none), and its masked
    forms (`sk-MARKE****W7xY`: the first 8 and last 4 around stars or dots)."""
    windows = {secret[i : i + FRAGMENT] for i in range(len(secret) - FRAGMENT + 1)}
    any_window = re.compile("|".join(map(re.escape, windows)))
    masked = re.compile(re.escape(secret[:FRAGMENT]) + r"[*.…•x]{2,}" + re.escape(secret[-4:]))
    return any_window, masked


def redact(text: str, secret: str, replacement: str) -> str:
    """`text` without `secret`, should a server echo it back whole, masked or in part (OpenAI's 401s
    quote a masked key). Redact before any truncation: a cut key is still a key.

    A part is the longest run of the text found in the secret, from FRAGMENT characters, except a run
    of letters alone shorter than LETTERS_ALONE: a key holding "upstream" must not blank that word
    out of every message (its "sk-upstr" does go)."""
    if not secret or not text:
        return text
    if len(secret) < FRAGMENT:
        return text.replace(secret, replacement)
    any_window, masked = _patterns(secret)
    text = masked.sub(replacement, text)
    if any_window.search(text) is None:
        return text
    parts: list[str] = []
    start = i = 0
    while i <= len(text) - FRAGMENT:
        if text[i : i + FRAGMENT] in secret:
            end = i + FRAGMENT
            while end < len(text) and text[i : end + 1] in secret:
                end += 1
            if not text[i:end].isalpha() or end - i >= LETTERS_ALONE:
                parts += [text[start:i], replacement]
                start = i = end
                continue
        i += 1
    parts.append(text[start:])
    return "".join(parts)


class StreamRedactor:
    """`redact` for a text that arrives in pieces (an LLM's deltas), where a secret may be split
    across them: a tail that could be the start of the secret (two characters or more of it, the
    last character already given included) is held until the next piece shows whether it is
    (`feed`), or the text ends (`flush`). Ordinary text keeps its pieces but for the rare tail that
    looks like a secret's start; of a secret, at most its first character shows."""

    def __init__(self, secret: str, replacement: str) -> None:
        self.secret, self.replacement = secret, replacement
        self.held = ""
        self.last = ""  # the last character given: a secret's start may be in it

    def feed(self, piece: str) -> str:
        text = self.held + piece
        seen = self.last + text
        keep = 0
        for n in range(min(len(seen), len(self.secret)), 1, -1):
            if seen[-n:] in self.secret:
                keep = min(n, len(text))
                break
        ready, self.held = text[: len(text) - keep], text[len(text) - keep :]
        self.last = ready[-1:] or self.last
        return redact(ready, self.secret, self.replacement)

    def flush(self) -> str:
        text, self.held = self.held, ""
        return redact(text, self.secret, self.replacement)
