"""The project: settings.py (the only reader of os.environ), urls.py (the URL map), asgi.py (the
server's entry point: `daphne voiceproxy.asgi:application`)."""
