"""Wyoming: Home Assistant's speech protocol, served from the registry's models (`manage.py wyoming`).

    catalog.py   the registry as Wyoming describes it (`info`), and its names back to models and voices
    handler.py   one client connection: describe, transcribe (+ streamed transcripts), synthesize
                 (+ streamed synthesis); each request audited as `wyoming:asr` / `wyoming:tts`
    server.py    the TCP server: the client allow-list, Zeroconf, a clean stop on SIGTERM

An edge like the HTTP views and the Realtime consumer: it parses events and calls the same STT and
TTS services (registry/speech), model cache and worker pool, never the HTTP API.
"""
