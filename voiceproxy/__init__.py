"""The project: settings.py (the only reader of os.environ), urls.py (the URL map), asgi.py (the
server's entry point: `daphne voiceproxy.asgi:application`)."""

__version__ = "0.1.0"  # the OpenAPI schema's and the landing page's
