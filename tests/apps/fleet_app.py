"""The application of the fleet tests (tests/it/fleet/) and of bench/rolling.py, in both
flavours: `application` (WSGI) and `app` (ASGI).

GET /              "ok PID"
POST /upload       the body's length and SHA-256, so the client checks it all arrived
GET /hold?PATH     creates PATH.started, then waits until the file PATH exists (at most
                   60 s): a worker kept busy for as long as the test wants, no sleep to tune
GET /healthz       "ok": the health view an application writes for Gunicorn, which
                   has no probe of its own
"""

import asyncio
import hashlib
import os
import time

HOLD_LIMIT_S = 60


def answer_for(method, path, query, body):
    if path == "/upload" and method == "POST":
        return "%d %s" % (len(body), hashlib.sha256(body).hexdigest())
    if path == "/healthz":
        return "ok"
    return "ok %d" % os.getpid()


def application(environ, start_response):
    path = environ["PATH_INFO"]
    if path == "/hold":
        open(environ["QUERY_STRING"] + ".started", "w").close()
        deadline = time.monotonic() + HOLD_LIMIT_S
        while not os.path.exists(environ["QUERY_STRING"]) and time.monotonic() < deadline:
            time.sleep(0.01)
        text = "held"
    else:
        length = int(environ.get("CONTENT_LENGTH") or 0)
        body = environ["wsgi.input"].read(length) if length else b""
        text = answer_for(environ["REQUEST_METHOD"], path, environ["QUERY_STRING"], body)
    data = text.encode()
    start_response(
        "200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(data)))]
    )
    return [data]


async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    path = scope["path"]
    query = scope["query_string"].decode()
    if path == "/hold":
        open(query + ".started", "w").close()
        deadline = time.monotonic() + HOLD_LIMIT_S
        while not os.path.exists(query) and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        text = "held"
    else:
        chunks = []
        while True:
            message = await receive()
            chunks.append(message.get("body", b""))
            if not message.get("more_body"):
                break
        text = answer_for(scope["method"], path, query, b"".join(chunks))
    data = text.encode()
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [
                (b"content-type", b"text/plain"),
                (b"content-length", str(len(data)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": data})
