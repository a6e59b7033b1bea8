"""The HTTP/2 tests' ASGI application, http2_app.py's twin for -k asgi: /echo reports
the scope and the body as JSON (201), /big?n=N streams N bytes in 64 KiB send()s,
each awaited (?tag=T counts them in /counters), /sleep?ms=M answers after an
asyncio.sleep, /hold?file=F reads its body, sends its head and a first piece, then
writes what its next receive() brings to F, /wait?file=F creates F.started, then
answers its pid once F exists (at most 30 s), /raise-before and /raise-after fail
before and after their head."""

import asyncio
import json
import os
import time
from urllib.parse import parse_qs

counters = {}


def text(value):
    return value.decode("latin-1") if isinstance(value, bytes) else value


async def answer(send, status, body, content_type=b"text/plain"):
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", content_type), (b"x-app", b"yes"), (b"connection", b"keep-alive")],
        }
    )
    await send({"type": "http.response.body", "body": body})


async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            kind = message["type"].replace("lifespan.", "")
            await send({"type": "lifespan.%s.complete" % kind})
            if kind == "shutdown":
                return
    path = scope["path"]
    query = {k: v[0] for k, v in parse_qs(scope["query_string"].decode()).items()}
    if path == "/big":
        n = int(query["n"])
        tag = query.get("tag")
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", str(n).encode())]})
        piece = b"x" * 65536
        sent = 0
        while sent < n:
            chunk = piece[: min(65536, n - sent)]
            sent += len(chunk)
            await send({"type": "http.response.body", "body": chunk, "more_body": sent < n})
            if tag:
                counters[tag] = counters.get(tag, 0) + 1
        return
    if path == "/sleep":
        await asyncio.sleep(int(query.get("ms", "100")) / 1000)
        return await answer(send, 200, b"slept")
    if path == "/hold":
        while (await receive()).get("more_body"):
            pass
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"first piece", "more_body": True})
        message = await receive()
        with open(query["file"], "a") as f:
            f.write(message["type"] + "\n")
        return
    if path == "/wait":
        gate = query["file"]
        open(gate + ".started", "w").close()
        deadline = time.monotonic() + 30
        while not os.path.exists(gate) and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        return await answer(send, 200, str(os.getpid()).encode())
    if path == "/raise-before":
        raise RuntimeError("boom before the head")
    if path == "/raise-after":
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"partial", "more_body": True})
        raise RuntimeError("boom mid-body")
    if path == "/counters":
        return await answer(send, 200, json.dumps(counters).encode())
    body = b""
    messages = 0
    while True:
        message = await receive()
        messages += 1
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    echoed = {
        "type": scope["type"],
        "http_version": scope["http_version"],
        "method": scope["method"],
        "scheme": scope["scheme"],
        "path": scope["path"],
        "raw_path": text(scope["raw_path"]),
        "query_string": text(scope["query_string"]),
        "headers": [[text(n), text(v)] for n, v in scope["headers"]],
        "client": list(scope["client"]),
        "server": list(scope["server"]),
        "body": body.decode("latin-1"),
        "messages": messages,
        "pid": os.getpid(),
    }
    await answer(send, 201, json.dumps(echoed).encode(), b"application/json")
