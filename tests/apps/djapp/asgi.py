"""`rgun -k asgi djapp.asgi:application`: the same project through Django's ASGI handler."""

import os

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "djapp.settings")

from django.core.asgi import get_asgi_application  # noqa: E402

application = get_asgi_application()
