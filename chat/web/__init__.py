"""The front door in the browser: the landing page, the playground (Talk over Realtime, Transcribe,
Speak) and the API docs. Django templates and static files; the pages call the public /v1/ API from
the browser, like any client."""
