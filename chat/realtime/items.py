"""A client's conversation items (`conversation.item.create`, a response's `input`), checked.

A user's `input_audio` content is decoded in the pool and transcribed in the background: the item
is added at once, its transcript follows (`...input_audio_transcription.completed`), and a response
that needs it waits for it.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from chat.realtime.conversation import Item, new_id
from chat.realtime.events import EventError, b64, decode_input
from chat.realtime.turns import joined
from registry.errors import OpenAIError
from registry.speech import audio, workers
from registry.speech.engines.base import Samples

if TYPE_CHECKING:
    from chat.realtime.session import RealtimeSession


async def client_item(session: RealtimeSession, data: Any, param: str) -> Item:
    """A client's item, checked; a user's audio content is transcribed (in the background)."""
    if not isinstance(data, dict):
        raise EventError(f"'{param}' must be an object.", param=param, code="invalid_type")
    kind = data.get("type", "message")
    item_id = data.get("id") or new_id("item")
    if not isinstance(item_id, str) or len(item_id) > 64:
        raise EventError(f"'{param}.id' must be a string of at most 64 characters.", param=f"{param}.id")
    if any(item.id == item_id for item in session.conversation.items):
        raise EventError(
            f"Item with id '{item_id}' already exists.", param=f"{param}.id", code="item_already_exists"
        )
    base = {"id": item_id, "object": "realtime.item", "status": "completed"}
    if kind == "function_call_output":
        call_id, output = data.get("call_id"), data.get("output")
        if not isinstance(call_id, str) or not isinstance(output, str):
            raise EventError(f"'{param}' needs call_id and output (strings).", param=f"{param}.call_id")
        return Item({**base, "type": kind, "call_id": call_id, "output": output})
    if kind == "function_call":
        name, call_id = data.get("name"), data.get("call_id") or new_id("call")
        if not isinstance(name, str):
            raise EventError(
                f"'{param}.name' is required.", param=f"{param}.name", code="missing_required_parameter"
            )
        return Item(
            {
                **base,
                "type": kind,
                "name": name,
                "call_id": call_id,
                "arguments": str(data.get("arguments") or "{}"),
            }
        )
    if kind != "message":
        raise EventError(
            f"'{param}.type' must be message, function_call or function_call_output.",
            param=f"{param}.type",
        )
    role = data.get("role")
    if role not in ("user", "assistant", "system"):
        raise EventError(f"'{param}.role' must be user, assistant or system.", param=f"{param}.role")
    content = data.get("content")
    if not isinstance(content, list) or not content:
        raise EventError(f"'{param}.content' must be a non-empty array.", param=f"{param}.content")
    transcriptions: list[asyncio.Task[str]] = []
    parts: list[dict[str, Any]] = []
    item = Item({**base, "type": "message", "role": role, "content": parts})
    allowed = {
        "user": ("input_text", "input_audio"),
        "system": ("input_text",),
        "assistant": ("output_text", "output_audio", "text", "audio"),
    }
    for i, part in enumerate(content):
        where = f"{param}.content[{i}]"
        kind = part.get("type") if isinstance(part, dict) else None
        if kind not in allowed[role]:
            raise EventError(
                f"'{where}.type' must be one of {', '.join(allowed[role])} for a {role} message.",
                param=f"{where}.type",
            )
        if kind == "input_audio":
            data_b64 = part.get("audio")
            if data_b64 is None:
                raise EventError(
                    f"'{where}.audio' is required.",
                    param=f"{where}.audio",
                    code="missing_required_parameter",
                )
            raw = b64(data_b64, f"{where}.audio")
            fmt = session.config.input_format
            try:
                samples = await workers.run(decode_input, raw, fmt)
            except audio.AudioError as exc:
                raise EventError(str(exc), param=f"{where}.audio", code="invalid_audio") from exc
            parts.append({"type": "input_audio", "transcript": None})
            transcriptions.append(session.spawn(_transcribe_part(session, item, len(parts) - 1, samples)))
        elif kind in ("output_audio", "audio"):
            parts.append({"type": "output_audio", "transcript": str(part.get("transcript") or "")})
        else:
            text = part.get("text")
            if not isinstance(text, str):
                raise EventError(
                    f"'{where}.text' must be a string.", param=f"{where}.text", code="invalid_type"
                )
            # The beta's assistant "text" is the GA's "output_text" (as "audio" is "output_audio").
            parts.append({"type": "output_text" if kind == "text" else kind, "text": text})
    if transcriptions:
        item.transcript = session.track(asyncio.ensure_future(joined(transcriptions)))
    return item


async def _transcribe_part(session: RealtimeSession, item: Item, index: int, samples: Samples) -> str:
    try:
        text = await session.transcribe(samples, session.prompt())
    except OpenAIError as exc:
        await session.send(
            {
                "type": "conversation.item.input_audio_transcription.failed",
                "item_id": item.id,
                "content_index": index,
                "error": {
                    "type": exc.type,
                    "code": str(exc.code or ""),
                    "message": exc.message,
                    "param": exc.param,
                },
            }
        )
        raise
    item.data["content"][index]["transcript"] = text
    await session.send(
        {
            "type": "conversation.item.input_audio_transcription.completed",
            "item_id": item.id,
            "content_index": index,
            "transcript": text,
            "usage": {"type": "duration", "seconds": round(len(samples) / session.buffer.rate, 3)},
        }
    )
    return text
