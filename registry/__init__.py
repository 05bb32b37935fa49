"""The registry: configuration, and who may use it (a Django app: models, admin, migrations, commands).

    models.py admin.py migrations/ management/  upstreams, API keys, speech models, voices, the request log
    registry_file.py       the declarative registry file (`loadregistry`)
    keys.py                secrets: client keys hashed, upstream keys encrypted at rest
    access.py              `authenticate(secret) -> ApiKey` (or AuthenticationFailed/RateLimited), model scope
    snapshot.py catalog.py the registry in memory, and name -> enabled model/voice lookups
    resolved.py            the frozen, ORM-free model spec the catalog hands to speech
    errors.py              the OpenAIError tree (plain Python; rendered by api/errors.py)
    audit.py               `audit.scope()`: one RequestLog row per unit of work, a typed Usage
    db_threads.py          the kept database connections (registry reads, audit writes after the response)

Sub-packages: `api/`, the HTTP edge (the only code that knows DRF or HttpRequest), and `speech/`, plain
Python speech (engines, the model cache, the worker pool, codecs, the STT and TTS services). These
modules import neither: dependencies run edge -> speech -> these.
"""
