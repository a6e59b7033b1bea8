"""For tests/it/control/reload_probe.rs: an application that fails lazily, as Django
does. Importing it imports nothing of its views; the first request imports the module
named by $LAZY_VIEWS (Django's URLconf), and a broken one makes every request a 500,
its traceback logged the way Django's `django.request` logger does. Like Django's
ALLOWED_HOSTS, a Host other than $LAZY_HOST (when set) is a 400."""

import importlib
import logging
import os

log = logging.getLogger("lazy.request")
views = None


def application(environ, start_response):
    global views
    allowed = os.environ.get("LAZY_HOST")
    if allowed and environ.get("HTTP_HOST") != allowed:
        return answer(start_response, "400 Bad Request", b"Bad Request (400)")
    try:
        if views is None:
            views = importlib.import_module(os.environ.get("LAZY_VIEWS", "lazy_views"))
        body = views.render(environ)
    except Exception:
        log.exception("Internal Server Error: %s", environ["PATH_INFO"])
        return answer(start_response, "500 Internal Server Error", b"Server Error (500)")
    return answer(start_response, "200 OK", body)


def answer(start_response, status, body):
    start_response(status, [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
