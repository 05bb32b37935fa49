"""The server keeps the registry in memory; a change made elsewhere applies from its next request.

These tests change the registry from this process (as the admin or `loadregistry` in another
process would) and call the daphne server at once: no waiting, no restart.
"""

from __future__ import annotations

import uuid

import openai
import pytest
from django.utils import timezone

from registry.models import ApiKey, RegistryVersion, TextToSpeechModel, Voice
from tests.audit_log import last_used


def version() -> int:
    return RegistryVersion.objects.get(pk=1).version


def speak(client: openai.OpenAI, **kwargs: str) -> int:
    kwargs.setdefault("model", "tts-1")
    kwargs.setdefault("voice", "alloy")
    response = client.audio.speech.with_raw_response.create(input="Hi.", response_format="pcm", **kwargs)
    return response.status_code


def test_a_new_voice_a_disabled_one_and_a_deleted_one_apply_from_the_next_request(client):
    model = TextToSpeechModel.objects.get(model_id="rhasspy/piper-en_US-joe-medium")
    name = f"v-{uuid.uuid4().hex[:8]}"
    before = version()
    voice = Voice.objects.create(model=model, name=name, aliases=[f"{name}-alias"])
    assert version() > before
    assert speak(client, voice=f"{name}-alias") == 200

    Voice.objects.filter(pk=voice.pk).update(enabled=False)  # a bulk update, as the admin's actions do
    with pytest.raises(openai.BadRequestError) as caught:
        speak(client, voice=name)
    assert caught.value.code == "invalid_voice"

    Voice.objects.filter(pk=voice.pk).update(enabled=True)
    assert speak(client, voice=name) == 200
    voice.delete()
    with pytest.raises(openai.BadRequestError):
        speak(client, voice=name)


def test_a_model_alias_added_and_removed_applies_from_the_next_request(client):
    model = TextToSpeechModel.objects.get(model_id="rhasspy/piper-en_US-joe-medium")
    alias = f"tts-{uuid.uuid4().hex[:8]}"
    model.aliases = [*model.aliases, alias]
    model.save()
    try:
        assert speak(client, model=alias) == 200
    finally:
        model.aliases = [a for a in model.aliases if a != alias]
        model.save()
    with pytest.raises(openai.NotFoundError):
        speak(client, model=alias)


def test_a_key_revoked_and_restored_by_bulk_update_applies_from_the_next_request(make_key, openai_client):
    key = make_key("snapshot-revoke")
    client = openai_client(api_key=key.secret)
    assert speak(client) == 200
    ApiKey.objects.filter(pk=key.row.pk).update(revoked_at=timezone.now())
    with pytest.raises(openai.AuthenticationError):
        speak(client)
    ApiKey.objects.filter(pk=key.row.pk).update(revoked_at=None)
    assert speak(client) == 200


def test_last_used_is_written_after_the_response_at_most_every_30_s(make_key, openai_client):
    key = make_key("snapshot-last-used")
    client = openai_client(api_key=key.secret)
    client.models.list()
    last_used(key.row)
    before = version()
    ApiKey.objects.filter(pk=key.row.pk).update(last_used=None)  # bookkeeping: no new version
    assert version() == before
    client.models.list()  # the server's copy of the key was used a moment ago: nothing to write

    other = make_key("snapshot-last-used-2")
    openai_client(api_key=other.secret).models.list()
    last_used(other.row)  # one writer, in order: the request before it has been written too
    assert ApiKey.objects.get(pk=key.row.pk).last_used is None
    assert version() == before + 1  # make_key's save bumped it; the last_used writes did not
