"""Chat: the LLM side (a Django app for its AudioReply model).

upstream.py       routing a model to an upstream, and the httpx calls (whole and streamed)
voice_chat.py     the voice-chat proxy: input audio -> transcripts -> upstream -> spoken reply
spoken_stream.py  a streamed reply's chunks re-shaped as audio deltas, over tts.speak_stream()
audio_store.py    audio ids -> transcripts, for multi-turn replies by audio id
serializers.py views.py urls.py   the /v1/chat/completions edge
"""
