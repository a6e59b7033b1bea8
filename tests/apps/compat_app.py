"""The application rgun and Gunicorn both serve in the side-by-side comparisons
(tests/it/compat): /raise fails in the call, /raise_first in the body's first item,
/raise_mid after the head and some body went out; /loggers describes the
`gunicorn.error` and `gunicorn.access` loggers as JSON, /app_logger logs through a
logger that borrowed their handlers (the Flask idiom); /empty answers 200 with no
body; anything else "ok". Importing it logs "compat_app imported" to gunicorn.error.
`asgi` is an ASGI application answering "ok", for the Uvicorn worker classes."""

import json
import logging

logging.getLogger("gunicorn.error").info("compat_app imported")


def fail_in_the_call():
    raise ValueError("boom in the call")


def body_failing_at_once():
    raise KeyError("boom in the first item")
    yield b""


def body_failing_midway():
    yield b"part one\n"
    raise RuntimeError("boom mid-body")


def describe(logger):
    return {
        "level": logger.level,
        "propagate": logger.propagate,
        "handlers": [
            {
                "file": getattr(h, "baseFilename", None),
                "is_file": isinstance(h, logging.FileHandler),
                "is_stream": isinstance(h, logging.StreamHandler),
                "stream_fd": h.stream.fileno() if type(h) is logging.StreamHandler else None,
                "format": h.formatter._fmt if h.formatter else None,
                "datefmt": h.formatter.datefmt if h.formatter else None,
            }
            for h in logger.handlers
        ],
    }


def borrow_handlers():
    """What Flask and FastAPI apps do to log in the server's format."""
    server = logging.getLogger("gunicorn.error")
    mine = logging.getLogger("compat_app")
    mine.handlers = server.handlers
    mine.setLevel(server.level)
    mine.propagate = False
    mine.warning("from the app's own logger")
    mine.debug("a debug line from the app")
    logging.getLogger("gunicorn.access").info("an access line from the app")


def application(environ, start_response):
    path = environ["PATH_INFO"]
    if path == "/loggers":
        body = json.dumps({
            name: describe(logging.getLogger("gunicorn." + name)) for name in ("error", "access")
        })
        start_response("200 OK", [("Content-Type", "application/json")])
        return [body.encode()]
    if path == "/app_logger":
        borrow_handlers()
    if path == "/raise":
        fail_in_the_call()
    if path == "/raise_first":
        start_response("200 OK", [("Content-Type", "text/plain")])
        return body_failing_at_once()
    if path == "/raise_mid":
        start_response("200 OK", [("Content-Type", "text/plain")])
        return body_failing_midway()
    if path == "/empty":
        start_response("200 OK", [("Content-Length", "0")])
        return []
    start_response("200 OK", [("Content-Type", "text/plain; charset=utf-8")])
    return [b"ok"]


async def asgi(scope, receive, send):
    """The ASGI twin for the Uvicorn worker classes: "ok" for every request."""
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            kind = message["type"].rsplit(".", 1)[-1]
            await send({"type": "lifespan." + kind + ".complete"})
            if kind == "shutdown":
                return
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": b"ok"})
