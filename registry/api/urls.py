from django.urls import path

from registry.api import views

urlpatterns = [
    path("models", views.ModelsView.as_view(), name="models"),
    path("models/<path:model_id>", views.ModelView.as_view(), name="model"),
    path("audio/transcriptions", views.TranscriptionsView.as_view(), name="transcriptions"),
    path("audio/translations", views.TranslationsView.as_view(), name="translations"),
    path("audio/speech", views.SpeechView.as_view(), name="speech"),
    path("audio/voices", views.VoicesView.as_view(), name="voices"),
]
