from django.apps import AppConfig


class RegistryConfig(AppConfig):
    name = "registry"
    verbose_name = "voiceproxy registry"

    def ready(self) -> None:
        from registry.api import schema  # noqa: F401  registers the OpenAPI auth extension
