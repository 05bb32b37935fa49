"""A voice's preview for the admin: a short sample spoken through the service /v1/audio/speech uses
(its pool, its cache), audited like any request."""

from __future__ import annotations

from registry import audit
from registry.speech import tts

PREVIEW_TEXT = "Hello! This is a short sample of my voice."
PREVIEW_CHARS = 200  # a preview is a sample, not a way around the API's keys and limits
PREVIEW_ENDPOINT = "admin:voice-preview"  # its audit rows' endpoint and route


async def speak_sample(*, model_id: str, voice: str, text: str, request_id: str) -> bytes:
    """`text` spoken by a registered voice as a wav file, through the service /v1/audio/speech uses
    (its pool, its cache), audited as PREVIEW_ENDPOINT under `request_id`.

    Raises what the service raises: ModelNotFound, InvalidRequest, ModelUnavailable, ServerBusy.
    """
    with audit.scope(method="GET", endpoint=PREVIEW_ENDPOINT, request_id=request_id) as record:
        voicing = await tts.voicing(api_key=None, model=model_id, voice=voice)
        audit.usage().characters_in = len(text)
        data = await tts.speak_whole(v=voicing, text=text, response_format="wav")
        record.bytes_out = len(data)
        return data
