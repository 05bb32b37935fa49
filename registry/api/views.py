"""/v1/models and /v1/audio/*: one async view per endpoint; services do the work."""

from __future__ import annotations

from typing import Any

from adrf.views import APIView
from django.http import HttpResponse, JsonResponse
from drf_spectacular.utils import extend_schema
from rest_framework.parsers import FormParser, MultiPartParser
from rest_framework.request import Request

from registry import catalog
from registry.api import responses
from registry.api.parsers import CheckedJSONParser
from registry.api.serializers import (
    SpeechParams,
    TranscriptionParams,
    TranslationParams,
    form_data,
)
from registry.speech import stt, tts


class ModelsView(APIView):
    @extend_schema(operation_id="listModels", summary="List models", responses={200: dict})
    async def get(self, request: Request) -> HttpResponse:
        return JsonResponse({"object": "list", "data": await catalog.model_objects(request.auth)})


class ModelView(APIView):
    @extend_schema(operation_id="retrieveModel", summary="Retrieve a model", responses={200: dict})
    async def get(self, request: Request, model_id: str) -> HttpResponse:
        return JsonResponse(await catalog.model_object(request.auth, model_id))


def _options(params: dict[str, Any]) -> stt.SttOptions:
    chunking = params.get("chunking_strategy")
    vad_parameters: dict[str, float] = {}
    if chunking and chunking["type"] == "server_vad":
        vad_parameters = stt.server_vad(
            threshold=chunking.get("threshold"),
            prefix_padding_ms=chunking.get("prefix_padding_ms"),
            silence_duration_ms=chunking.get("silence_duration_ms"),
        )
    return stt.SttOptions(
        model=params.get("model") or None,
        language=params.get("language") or None,
        prompt=params.get("prompt") or None,
        temperature=params.get("temperature"),
        word_timestamps="word" in params.get("timestamp_granularities", []) or bool(params.get("include")),
        vad_filter=chunking is not None,  # only when asked: never silently
        vad_parameters=vad_parameters,
    )


class TranscriptionsView(APIView):
    parser_classes = [MultiPartParser, FormParser]

    @extend_schema(operation_id="createTranscription", request=TranscriptionParams, responses={200: dict})
    async def post(self, request: Request) -> HttpResponse:
        params = TranscriptionParams(data=await form_data(request))
        params.is_valid(raise_exception=True)
        data = params.validated_data
        audio_bytes = data["file"].read()
        options = _options(data)
        include_logprobs = "logprobs" in data["include"]
        if data["stream"]:
            segment_stream = await stt.stream(
                api_key=request.auth, source=audio_bytes, task="transcribe", options=options
            )
            return responses.transcription_stream(segment_stream, include_logprobs=include_logprobs)
        result = await stt.transcribe(api_key=request.auth, source=audio_bytes, options=options)
        return responses.transcription_response(
            result,
            data["response_format"],
            granularities=data["timestamp_granularities"],
            include_logprobs=include_logprobs,
        )


class TranslationsView(APIView):
    parser_classes = [MultiPartParser, FormParser]

    @extend_schema(operation_id="createTranslation", request=TranslationParams, responses={200: dict})
    async def post(self, request: Request) -> HttpResponse:
        params = TranslationParams(data=await form_data(request))
        params.is_valid(raise_exception=True)
        data = params.validated_data
        result = await stt.translate(api_key=request.auth, source=data["file"].read(), options=_options(data))
        return responses.transcription_response(
            result, data["response_format"], granularities=[], include_logprobs=False
        )


class SpeechView(APIView):
    parser_classes = [CheckedJSONParser]

    @extend_schema(operation_id="createSpeech", request=SpeechParams, responses={200: bytes})
    async def post(self, request: Request) -> HttpResponse:
        # At most a few KiB of JSON: parsed on the loop, sparing a thread hop on the TTS latency path.
        params = SpeechParams(data=request.data)
        params.is_valid(raise_exception=True)
        data = params.validated_data
        speech = await tts.speech(
            api_key=request.auth,
            model=data["model"] or None,
            voice=data["voice"],
            speed=data["speed"],
            text=data["input"],
            response_format=data["response_format"],
        )
        return responses.speech_response(
            speech, stream_format=data["stream_format"], characters=len(data["input"])
        )


class VoicesView(APIView):
    @extend_schema(operation_id="listVoices", summary="List voices, per model", responses={200: dict})
    async def get(self, request: Request) -> HttpResponse:
        voices = await catalog.voice_objects(request.auth, model=request.query_params.get("model") or None)
        return JsonResponse({"object": "list", "data": voices})
