"""For tests/it/control/reload_probe.rs: lazy_app.py's ASGI twin, as Django's asgi.py
behaves: its views ($LAZY_VIEWS) are imported by the first request, and a broken one
makes every request a 500 with the traceback logged."""

import importlib
import logging
import os

log = logging.getLogger("lazy.request")
views = None


async def application(scope, receive, send):
    global views
    if scope["type"] != "http":
        return
    try:
        if views is None:
            views = importlib.import_module(os.environ.get("LAZY_VIEWS", "lazy_views"))
        status, body = 200, views.render(scope)
    except Exception:
        log.exception("Internal Server Error: %s", scope["path"])
        status, body = 500, b"Server Error (500)"
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": body})
