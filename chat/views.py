"""/v1/chat/completions: the serializer checks shapes, voice_chat works, errors render centrally."""

from __future__ import annotations

from collections.abc import AsyncIterator

from adrf.views import APIView
from asgiref.sync import sync_to_async
from django.http import HttpResponse, JsonResponse
from drf_spectacular.utils import extend_schema
from rest_framework.request import Request

from chat import upstream, voice_chat
from chat.realtime import admission
from chat.serializers import ChatCompletionParams
from registry import client_secrets
from registry.api import sse
from registry.api.parsers import CheckedJSONParser
from registry.api.serializers import request_data
from registry.errors import InvalidRequest, PermissionDenied


async def _wire(events: AsyncIterator[voice_chat.Payload]) -> AsyncIterator[sse.Payload]:
    """The chat events as SSE payloads: an upstream's comment lines are relayed as comments."""
    async for event in events:
        yield sse.Comment(event.text) if isinstance(event, upstream.Comment) else event


class ChatCompletionsView(APIView):
    parser_classes = [CheckedJSONParser]

    @extend_schema(
        operation_id="createChatCompletion",
        summary="Chat completion with audio in (input_audio parts) and audio out (modalities, audio)",
        request=ChatCompletionParams,
        responses={200: dict},
    )
    async def post(self, request: Request) -> HttpResponse:
        body = await request_data(request)
        if not isinstance(body, dict):
            raise InvalidRequest("The request body must be a JSON object.", param="body", code="invalid_body")
        params = ChatCompletionParams(data=body)
        # Decoding and hashing megabytes of base64 audio is CPU work: off the event loop.
        await sync_to_async(params.is_valid, thread_sensitive=False)(raise_exception=True)
        plan = await voice_chat.prepare(api_key=request.auth, params=params.validated_data, body=body)
        if plan.stream:
            return sse.event_stream(_wire(await voice_chat.voice_chat_stream(plan)))
        completion = await voice_chat.voice_chat(plan)
        # Serialising megabytes of base64 audio is CPU work too.
        return await sync_to_async(JsonResponse, thread_sensitive=False)(completion)


class ClientSecretsView(APIView):
    """POST /v1/realtime/client_secrets: a short-lived secret a browser opens a Realtime session with."""

    parser_classes = [CheckedJSONParser]

    @extend_schema(
        operation_id="createRealtimeClientSecret",
        summary="Mint a short-lived client secret (ek_...) for a browser's Realtime session",
        request=dict,
        responses={200: dict},
    )
    async def post(self, request: Request) -> HttpResponse:
        scheme, _, token = request.META.get("HTTP_AUTHORIZATION", "").partition(" ")
        if client_secrets.is_client_secret(token.strip()):
            # Else a leaked browser secret could renew itself for as long as its key lives.
            raise PermissionDenied(
                "A client secret cannot mint client secrets; use an API key.", code="secret_not_allowed"
            )
        body = await request_data(request)
        data = body if body or isinstance(body, list) else {}  # no body: defaults; [] is refused
        return JsonResponse(await admission.mint_secret(api_key=request.auth, data=data))
