from django.apps import AppConfig
from django.contrib.admin import apps as admin_apps


class RegistryConfig(AppConfig):
    default = True

    name = "registry"
    verbose_name = "voiceproxy registry"

    def ready(self) -> None:
        from django.conf import settings
        from django.core.exceptions import ImproperlyConfigured

        from registry.api import schema  # noqa: F401  registers the OpenAPI auth extension
        from registry.speech import memory

        try:  # a typo in the budget stops the start, not the first load
            memory.parse_budgets(settings.VOICEPROXY_MODEL_MEMORY)
        except ValueError as exc:
            raise ImproperlyConfigured(f"VOICEPROXY_MODEL_MEMORY: {exc}") from exc


class VoiceproxyAdminConfig(admin_apps.AdminConfig):
    """django.contrib.admin with voiceproxy's site (registry/admin_site.py) as `admin.site`."""

    default = False  # named in INSTALLED_APPS; RegistryConfig is the app's own
    default_site = "registry.admin_site.VoiceproxyAdminSite"
