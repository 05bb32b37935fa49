from django.contrib import admin
from django.urls import include, path, re_path
from drf_spectacular.views import SpectacularJSONAPIView
from rest_framework.permissions import AllowAny

from registry.api import API_PREFIX, health
from registry.api.errors import not_found_view

v1 = [
    path("", include("registry.api.urls")),
    path("", include("chat.urls")),
    # Public, so clients, SDK generators and fuzzers can read it without a key.
    path(
        "openapi.json",
        SpectacularJSONAPIView.as_view(authentication_classes=[], permission_classes=[AllowAny]),
        name="openapi",
    ),
    # Last: anything else under /v1/ is a 404 in the OpenAI shape, not Django's HTML page.
    re_path(r"^.*$", not_found_view),
]

urlpatterns = [
    path(API_PREFIX.lstrip("/"), include(v1)),
    path("health", health.health, name="health"),
    path("health/ready", health.ready, name="ready"),
    path("admin/", admin.site.urls),
    # The front door: landing page, playground, API docs (static files: ServeStatic middleware).
    path("", include("chat.web.urls")),
]

handler404 = "registry.api.errors.handler404"
handler500 = "registry.api.errors.handler500"
