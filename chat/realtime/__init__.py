"""The Realtime API (`/v1/realtime`, OpenAI's GA protocol) on voiceproxy's own pipeline.

    admission.py   who may open a session: key, subprotocol key or client secret; session caps
    config.py      the session's configuration: defaults, `session.update` checked field by field
    turns.py       the input audio buffer: server VAD finds turns, transcription runs as they grow
    conversation.py  the items, and what the upstream is told of them (truncated to what was heard)
    response.py    one response: upstream stream -> transcript deltas and spoken audio deltas
    session.py     one session: client events in, server events out; knows no socket
    consumer.py    the Channels edge: the handshake, JSON frames in and out
    routing.py     the WebSocket URL

Everything below the consumer is plain Python over the same services as the HTTP endpoints (speech
stt/tts, the worker pool, chat/upstream.py, the audit log); nothing calls our own HTTP API.
"""
