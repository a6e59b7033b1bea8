"""Settings: no database, sessions in signed cookies, no CSRF (the tests post forms
directly), and django.request errors (with tracebacks) logged to stderr, which rgun
sends to its error log. DJAPP_PROPAGATE=1 lets view exceptions reach the server."""

import os

SECRET_KEY = "rgun-test-secret"
DEBUG = False
DEBUG_PROPAGATE_EXCEPTIONS = os.environ.get("DJAPP_PROPAGATE") == "1"
ALLOWED_HOSTS = ["localhost", "127.0.0.1"]
ROOT_URLCONF = "djapp.urls"
INSTALLED_APPS = []
DATABASES = {}
MIDDLEWARE = [
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
]
SESSION_ENGINE = "django.contrib.sessions.backends.signed_cookies"
USE_TZ = True
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"stderr": {"class": "logging.StreamHandler"}},
    "loggers": {"django.request": {"handlers": ["stderr"], "level": "ERROR", "propagate": False}},
}
