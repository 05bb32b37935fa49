"""Speech, plain Python: no request, no response, no socket.

    engines/   base.py (the SpeechToText/TextToSpeech Protocols), whisper, kokoro, piper; loaded by name
    cache.py   the one model cache: the only place engines are constructed (single-flight, LRU, idle TTL)
    workers.py the one bounded pool for blocking work (loading, codecs, inference); 503 past its queue
    audio.py   decode, resample, encode (PyAV), raw PCM
    text.py    sentence splitting and what is worth reading aloud
    stt.py     speech to text: bytes or PCM -> Transcript, whole or streamed
    tts.py     text to speech: a whole or growing text -> audio; speak_stream() is the streamed component

HTTP views, the chat proxy, a WebSocket consumer and the bench all call these same functions in
process. They depend only on the registry's plain modules (errors, audit, resolved, catalog).
"""
