from django.apps import AppConfig
from django.contrib.admin import apps as admin_apps


class RegistryConfig(AppConfig):
    default = True

    name = "registry"
    verbose_name = "voiceproxy registry"

    def ready(self) -> None:
        from registry.api import schema  # noqa: F401  registers the OpenAPI auth extension


class VoiceproxyAdminConfig(admin_apps.AdminConfig):
    """django.contrib.admin with voiceproxy's site (registry/admin_site.py) as `admin.site`."""

    default = False  # named in INSTALLED_APPS; RegistryConfig is the app's own
    default_site = "registry.admin_site.VoiceproxyAdminSite"
