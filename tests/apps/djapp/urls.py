from django.urls import path

from . import views

urlpatterns = [
    path("", views.index),
    path("form", views.form),
    path("upload", views.upload),
    path("login", views.login),
    path("whoami", views.whoami),
    path("stream", views.stream),
    path("boom", views.boom),
    path("greet/<str:name>", views.greet),
    path("café", views.cafe),
]
