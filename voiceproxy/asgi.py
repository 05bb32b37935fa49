"""ASGI entry point: `daphne voiceproxy.asgi:application`."""

import os

from channels.routing import ProtocolTypeRouter
from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "voiceproxy.settings")

# Built before anything imports models: get_asgi_application() sets Django up.
django_application = get_asgi_application()

application = ProtocolTypeRouter({"http": django_application})
