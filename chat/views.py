"""/v1/chat/completions: the view parses, voice_chat works, errors render centrally."""

from __future__ import annotations

from adrf.views import APIView
from asgiref.sync import sync_to_async
from django.http import HttpResponse, JsonResponse, StreamingHttpResponse
from drf_spectacular.utils import extend_schema
from rest_framework.parsers import JSONParser
from rest_framework.request import Request

from chat import voice_chat


class ChatCompletionsView(APIView):
    parser_classes = [JSONParser]

    @extend_schema(
        operation_id="createChatCompletion",
        summary="Chat completion with audio in (input_audio parts) and audio out (modalities, audio)",
        request=dict,
        responses={200: dict},
    )
    async def post(self, request: Request) -> HttpResponse:
        # Parsing a large JSON body (base64 audio) is CPU work: off the event loop.
        body = await sync_to_async(lambda: request.data, thread_sensitive=False)()
        plan = await voice_chat.prepare(api_key=request.auth, body=body)
        if plan.stream:
            body = await voice_chat.voice_chat_stream(plan)
            response = StreamingHttpResponse(body, content_type="text/event-stream")
            response["Cache-Control"] = "no-cache"
            response["X-Accel-Buffering"] = "no"
            return response
        completion = await voice_chat.voice_chat(plan)
        # Serialising megabytes of base64 audio is CPU work too.
        return await sync_to_async(JsonResponse, thread_sensitive=False)(completion)
