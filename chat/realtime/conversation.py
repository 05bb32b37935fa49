"""A Realtime session's conversation: its items in order, and what the upstream LLM is told of them.

Items are kept in OpenAI's shape (what `conversation.item.*` events carry). A user's spoken item
holds a future for its transcript (the upstream hears words, not audio); an assistant's spoken item
holds where each sentence's audio ended, so `truncate(audio_end_ms)` keeps exactly the text the
user heard, and the next turn's context is what was said.
"""

from __future__ import annotations

import asyncio
import json
import secrets
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from registry.errors import InvalidRequest


def new_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(10)}"


@dataclass
class Item:
    data: dict[str, Any]
    transcript: asyncio.Future[str] | None = None  # a user's audio, being transcribed
    # An assistant's spoken reply: (characters of its transcript, ms of audio) at each sentence's end.
    marks: list[tuple[int, float]] = field(default_factory=list)
    audio_ms: float = 0.0  # audio sent for it so far

    @property
    def id(self) -> str:
        return str(self.data["id"])


class ItemNotFound(InvalidRequest):
    code = "item_not_found"


class Conversation:
    def __init__(self) -> None:
        self.items: list[Item] = []

    def last_id(self) -> str | None:
        return self.items[-1].id if self.items else None

    def add(self, item: Item, previous_item_id: str | None = None) -> str | None:
        """Insert after `previous_item_id` ("root": first; None: last); returns the id before it."""
        if previous_item_id is None:
            before = self.last_id()
            self.items.append(item)
            return before
        if previous_item_id == "root":
            self.items.insert(0, item)
            return None
        index = self.index(previous_item_id, param="previous_item_id")
        self.items.insert(index + 1, item)
        return previous_item_id

    def previous_id(self, item_id: str) -> str | None:
        """The id of the item before this one (None when it is first, or gone)."""
        for before, item in zip([None, *self.items], self.items, strict=False):
            if item.id == item_id:
                return before.id if before is not None else None
        return None

    def index(self, item_id: Any, *, param: str = "item_id") -> int:
        for i, item in enumerate(self.items):
            if item.id == item_id:
                return i
        raise ItemNotFound(f"Item with item_id not found: {item_id}", param=param)

    def get(self, item_id: Any, *, param: str = "item_id") -> Item:
        return self.items[self.index(item_id, param=param)]

    def delete(self, item_id: Any) -> None:
        del self.items[self.index(item_id)]

    def check_truncate(self, item_id: Any, content_index: Any, audio_end_ms: Any) -> Item:
        """The item `truncate` would cut, or InvalidRequest saying why it cannot (nothing changes)."""
        item = self.get(item_id)
        data = item.data
        if data.get("role") != "assistant" or data.get("type") != "message":
            raise InvalidRequest(
                "Only assistant messages can be truncated.", param="item_id", code="invalid_value"
            )
        if content_index != 0 or not data.get("content") or data["content"][0].get("type") != "output_audio":
            raise InvalidRequest(
                "The item has no audio content at that index.", param="content_index", code="invalid_value"
            )
        if isinstance(audio_end_ms, bool) or not isinstance(audio_end_ms, int) or audio_end_ms < 0:
            raise InvalidRequest(
                "'audio_end_ms' must be a non-negative integer.", param="audio_end_ms", code="invalid_value"
            )
        if audio_end_ms > item.audio_ms + 1:
            raise InvalidRequest(
                f"audio_end_ms {audio_end_ms} is beyond the item's audio ({item.audio_ms:.0f} ms).",
                param="audio_end_ms",
                code="invalid_value",
            )
        return item

    def truncate(self, item_id: Any, content_index: Any, audio_end_ms: Any) -> None:
        """Cut an assistant's spoken item to the audio the user heard (InvalidRequest if it is not one)."""
        item = self.check_truncate(item_id, content_index, audio_end_ms)
        data = item.data
        part = data["content"][0]
        part["transcript"] = heard(part.get("transcript") or "", item.marks, float(audio_end_ms))
        item.audio_ms = float(audio_end_ms)
        item.marks = [(chars, ms) for chars, ms in item.marks if ms <= audio_end_ms]

    async def messages(self, instructions: str, items: Iterable[Item] | None = None) -> list[dict[str, Any]]:
        """The chat-completions messages for these items (the whole conversation by default):
        transcripts awaited, function calls and their outputs as tool calls and tool messages."""
        out: list[dict[str, Any]] = [{"role": "system", "content": instructions}] if instructions else []
        for item in list(self.items if items is None else items):
            data = item.data
            kind = data.get("type")
            if kind == "function_call":
                call = {
                    "id": data["call_id"],
                    "type": "function",
                    "function": {"name": data["name"], "arguments": data.get("arguments") or "{}"},
                }
                last = out[-1] if out else None
                if last and last["role"] == "assistant" and last.get("tool_calls") is not None:
                    last["tool_calls"].append(call)
                else:
                    out.append({"role": "assistant", "content": None, "tool_calls": [call]})
            elif kind == "function_call_output":
                out.append(
                    {"role": "tool", "tool_call_id": data["call_id"], "content": str(data.get("output", ""))}
                )
            elif kind == "message":
                if item.transcript is not None:
                    try:
                        await asyncio.shield(item.transcript)
                    except Exception:  # noqa: S112 - a failed transcription was reported; it says nothing
                        continue
                text = " ".join(t for t in map(_part_text, data.get("content") or []) if t)
                if text:
                    out.append({"role": data.get("role", "user"), "content": text})
        return out


def _part_text(part: dict[str, Any]) -> str:
    if part.get("type") in ("input_text", "output_text", "text"):
        return str(part.get("text") or "")
    if part.get("type") in ("input_audio", "output_audio", "audio"):
        return str(part.get("transcript") or "")
    return ""


def heard(transcript: str, marks: list[tuple[int, float]], audio_end_ms: float) -> str:
    """The part of `transcript` spoken in its first `audio_end_ms`: whole sentences up to the last
    one that ended in time, then as many words of the next as its share of that sentence's audio."""
    done_chars, done_ms = 0, 0.0
    for chars, ms in marks:
        if ms <= audio_end_ms:
            done_chars, done_ms = chars, ms
            continue
        sentence = transcript[done_chars:chars]
        share = (audio_end_ms - done_ms) / (ms - done_ms) if ms > done_ms else 0.0
        words = sentence.split()
        kept = words[: int(len(words) * share)]
        return (transcript[:done_chars] + (" " if done_chars and kept else "") + " ".join(kept)).strip()
    return transcript[:done_chars].strip() if marks else ""


def function_call_arguments(text: str) -> str:
    """Arguments as a JSON object's text, whatever the upstream sent (a model may send none)."""
    try:
        return json.dumps(json.loads(text)) if text.strip() else "{}"
    except ValueError:
        return text
