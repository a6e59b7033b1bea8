"""The reload probe's Python side (worker/probe.rs): drain a WSGI response as a server
does, run an ASGI application's answer to its end, and collect the errors the application logs while it answers, since frameworks
(Django's `django.request`) turn an exception into a 500 and log the traceback rather
than raise it."""

import logging


class Errors(logging.Handler):
    """Error records (with their tracebacks) logged while the probe runs."""

    def __init__(self):
        super().__init__(logging.ERROR)
        self.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        self.texts = []

    def emit(self, record):
        self.texts.append(self.format(record))

    def __enter__(self):
        logging.getLogger().addHandler(self)
        return self

    def __exit__(self, *exc):
        logging.getLogger().removeHandler(self)
        return False


def drain(result):
    """Iterates the response to its end and closes it; the body's size."""
    size = 0
    try:
        for chunk in result:
            size += len(chunk)
    finally:
        close = getattr(result, "close", None)
        if close is not None:
            close()
    return size


def asgi_status(event_loop, app, scope):
    """Runs the ASGI application on `scope` with an empty body until it returns; the
    status of its `http.response.start` (None when it sent none)."""
    sent = []

    async def receive():
        if sent and sent[-1].get("type") == "http.response.body" and not sent[-1].get("more_body"):
            return {"type": "http.disconnect"}
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message):
        sent.append(message)

    event_loop.run_until_complete(app(scope, receive, send))
    return next((m.get("status") for m in sent if m.get("type") == "http.response.start"), None)
