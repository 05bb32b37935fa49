from django.urls import path

from chat import views

urlpatterns = [
    path("chat/completions", views.ChatCompletionsView.as_view(), name="chat-completions"),
    path("realtime/client_secrets", views.ClientSecretsView.as_view(), name="realtime-client-secrets"),
]
