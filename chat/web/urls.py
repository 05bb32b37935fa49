from django.urls import path
from drf_spectacular.views import SpectacularSwaggerView

from chat.web import views

urlpatterns = [
    path("", views.home, name="home"),
    path("playground/", views.playground, name="playground"),
    path("playground/secret", views.playground_secret, name="playground-secret"),
    path("docs/", SpectacularSwaggerView.as_view(url_name="openapi"), name="docs"),
]
