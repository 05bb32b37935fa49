"""The WebSocket URLs: `/v1/realtime`, as OpenAI's SDKs build it from their base URL."""

from django.urls import path

from chat.realtime.consumer import RealtimeConsumer

websocket_urlpatterns = [path("v1/realtime", RealtimeConsumer.as_asgi())]
