"""A `response.create` (or a turn's automatic response) planned: the session's configuration with the
event's overrides applied and checked, the upstream routed, the body and the items it answers."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from chat.realtime import admission
from chat.realtime.config import max_output_tokens, modalities, tool_choice, tools, voice
from chat.realtime.conversation import Item, new_id
from chat.realtime.events import EventError
from chat.realtime.items import client_item
from chat.realtime.response import ResponsePlan
from registry import access
from registry.speech import tts

if TYPE_CHECKING:
    from chat.realtime.session import RealtimeSession


async def plan_response(session: RealtimeSession, given: dict[str, Any]) -> ResponsePlan:
    config = session.config
    known = {"output_modalities", "modalities", "instructions", "audio", "tools", "tool_choice",
             "temperature", "max_output_tokens", "max_response_output_tokens", "conversation", "input",
             "metadata", "voice", "output_audio_format", "prompt", "tracing"}  # fmt: skip
    for name in given:
        if name not in known:
            raise EventError(
                f"Unknown parameter: 'response.{name}'.",
                param=f"response.{name}",
                code="unknown_parameter",
            )
    out_modalities = list(config.output_modalities)
    if "output_modalities" in given or "modalities" in given:
        name = "output_modalities" if "output_modalities" in given else "modalities"
        out_modalities = modalities(given[name], f"response.{name}")
    instructions = given.get("instructions", config.instructions)
    if not isinstance(instructions, str):
        raise EventError("'response.instructions' must be a string.", param="response.instructions")
    fmt, voice_name, voicing = config.output_format, config.voice, session.voicing
    audio = given.get("audio") or {}
    output = audio.get("output") or {} if isinstance(audio, dict) else None
    if not isinstance(output, dict):
        raise EventError("'response.audio.output' must be an object.", param="response.audio.output")
    if output.get("format") is not None or given.get("output_audio_format") is not None:
        fmt = config.updated(
            {"audio": {"output": {"format": output.get("format") or given.get("output_audio_format")}}},
            "response",
        ).output_format
    new_voice = output.get("voice", given.get("voice"))
    if new_voice is not None:
        voice_name = voice(new_voice, "response.audio.output.voice")
        voicing = await tts.voicing(
            api_key=session.api_key,
            model=config.speech_model,
            voice=voice_name,
            speed=config.speed,
            voice_param="response.audio.output.voice",
        )
    offered = list(config.tools) if "tools" not in given else tools(given["tools"], "response.tools")
    choice = (
        tool_choice(given["tool_choice"], "response.tool_choice")
        if "tool_choice" in given
        else config.tool_choice
    )
    limit = config.max_output_tokens
    for name in ("max_output_tokens", "max_response_output_tokens"):
        if name in given:
            limit = max_output_tokens(given[name], f"response.{name}")
    temperature = config.temperature
    if given.get("temperature") is not None:
        temperature = config.updated({"temperature": given["temperature"]}, "response").temperature
    conversation_mode = given.get("conversation", "auto")
    if conversation_mode not in ("auto", "none"):
        raise EventError("'response.conversation' must be auto or none.", param="response.conversation")
    metadata = given.get("metadata")
    if session.api_key is not None:
        # The key again, as of now (revoked, expired, its rate limit: each response counts).
        key = session.api_key
        session.api_key = await asyncio.to_thread(
            access.authenticate_hashed, key.secret_hash, shown=key.prefix
        )
    target = await admission.check_model(session.api_key, config.model)
    body: dict[str, Any] = {"model": config.model}
    if offered:
        body["tools"] = [
            {
                "type": "function",
                "function": {
                    "name": t["name"],
                    "description": t["description"],
                    "parameters": t["parameters"],
                },
            }
            for t in offered
        ]
        body["tool_choice"] = (
            choice if isinstance(choice, str) else {"type": "function", "function": {"name": choice["name"]}}
        )
    if temperature is not None:
        body["temperature"] = temperature
    if limit != "inf":
        body["max_tokens"] = limit
    items = (
        await _input_items(session, given["input"]) if "input" in given else list(session.conversation.items)
    )

    async def messages() -> list[dict[str, Any]]:
        return await session.conversation.messages(instructions, items)

    return ResponsePlan(
        id=new_id("resp"),
        session_id=config.id,
        api_key_id=session.record.api_key_id,
        key_prefix=session.record.key_prefix,
        model=config.model,
        target=target,
        messages=messages,
        body=body,
        modalities=out_modalities,
        voicing=voicing if "audio" in out_modalities else None,
        voice_name=voice_name or (voicing.voice.name if voicing else None),
        output_format=fmt,
        into_conversation=conversation_mode == "auto",
        tool_names={t["name"] for t in offered},
        metadata=metadata if isinstance(metadata, dict) else None,
    )


async def _input_items(session: RealtimeSession, given: Any) -> list[Item]:
    if not isinstance(given, list):
        raise EventError(
            "'response.input' must be an array of items.", param="response.input", code="invalid_type"
        )
    items = []
    for i, entry in enumerate(given):
        if isinstance(entry, dict) and entry.get("type") == "item_reference":
            items.append(session.conversation.get(entry.get("id"), param=f"response.input[{i}].id"))
        else:
            items.append(await client_item(session, entry, f"response.input[{i}]"))
    return items
