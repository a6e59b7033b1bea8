"""Raw ASGI 3 applications for tests/it/asgi.rs: the scope, receive() and send()
(streaming, backpressure, disconnects, errors) and the lifespan protocol."""

import asyncio
import json
import os
import time

# Who imported this module (the master with --preload, else the worker).
IMPORTED_BY = os.getpid()

# What the streaming and disconnect routes did, for other requests to report.
counters = {"chunks_sent": 0, "waiting": 0, "disconnects": 0}


def plain(text, status=200, headers=()):
    body = text.encode()
    return [
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"text/plain")] + list(headers),
        },
        {"type": "http.response.body", "body": body},
    ]


async def reply(send, text, status=200, headers=()):
    for message in plain(text, status, headers):
        await send(message)


def jsonable(value):
    if isinstance(value, bytes):
        return value.decode("latin-1")
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, dict):
        return {k: jsonable(v) for k, v in value.items()}
    return value


async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        return await lifespan(scope, receive, send)
    if scope["type"] == "websocket":
        return await WS_ROUTES[scope["path"]](scope, receive, send)
    path = scope["path"]
    route = ROUTES.get(path.removeprefix(scope["root_path"]))
    if route is None:
        return await reply(send, "not found: " + path, 404)
    await route(scope, receive, send)


async def lifespan(scope, receive, send):
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            scope["state"]["started_by"] = os.getpid()
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            marker = os.environ.get("ASGI_SHUTDOWN_FILE")
            if marker:
                with open(marker, "a") as f:
                    f.write("shutdown %d\n" % os.getpid())
            await send({"type": "lifespan.shutdown.complete"})
            return


async def hello(scope, receive, send):
    await reply(send, "Hello, ASGI!")


async def scope_route(scope, receive, send):
    shown = {k: v for k, v in scope.items() if k != "state"}
    shown["state"] = dict(scope.get("state", {}))
    shown["loop"] = type(asyncio.get_running_loop()).__module__
    shown["types"] = {
        "raw_path": type(scope["raw_path"]).__name__,
        "query_string": type(scope["query_string"]).__name__,
        "header_pair": type(scope["headers"][0][0]).__name__ if scope["headers"] else None,
        "client": type(scope["client"]).__name__,
        "server_port": type(scope["server"][1]).__name__,
    }
    await reply(send, json.dumps(jsonable(shown)), headers=[(b"x-route", b"scope")])


async def echo(scope, receive, send):
    """The body back, with how many http.request messages it came in."""
    chunks = []
    messages = 0
    while True:
        message = await receive()
        assert message["type"] == "http.request", message
        messages += 1
        chunks.append(message["body"])
        if not message.get("more_body", False):
            break
    body = b"".join(chunks)
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"x-messages", str(messages).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})


async def stream(scope, receive, send):
    """?n chunks of 64 KiB, each send() awaited: a reader that stalls must stall us."""
    n = int(scope["query_string"] or b"64")
    counters["chunks_sent"] = 0
    await send({"type": "http.response.start", "status": 200, "headers": []})
    chunk = b"x" * 65536
    for _ in range(n):
        await send({"type": "http.response.body", "body": chunk, "more_body": True})
        counters["chunks_sent"] += 1
    await send({"type": "http.response.body", "body": b""})


async def endless(scope, receive, send):
    """Streams until send() raises the OSError that says the client left."""
    await send({"type": "http.response.start", "status": 200, "headers": []})
    try:
        while True:
            await send({"type": "http.response.body", "body": b"y" * 65536, "more_body": True})
    except OSError as e:
        counters["send_oserror"] = type(e).__name__
        raise


async def pids(scope, receive, send):
    await reply(send, json.dumps({"imported_by": IMPORTED_BY, "serving": os.getpid()}))


async def counters_route(scope, receive, send):
    await reply(send, json.dumps(counters))


async def wait_disconnect(scope, receive, send):
    """A long-poll that never answers: it ends when the client leaves."""
    counters["waiting"] += 1
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            counters["disconnects"] += 1
            return


async def ignores_disconnect(scope, receive, send):
    """Never looks at receive(): only a cancellation ends it."""
    counters["ignoring"] = counters.get("ignoring", 0) + 1
    try:
        await asyncio.sleep(3600)
    except asyncio.CancelledError:
        counters["cancelled"] = counters.get("cancelled", 0) + 1
        raise


async def sleepy(scope, receive, send):
    await asyncio.sleep(0.05)
    await reply(send, "slept")


async def block(scope, receive, send):
    """Blocks the event loop itself for ?seconds (what --timeout must catch)."""
    time.sleep(float(scope["query_string"]))
    await reply(send, "unblocked")


async def raise_before(scope, receive, send):
    raise RuntimeError("boom before the response")


async def raise_after(scope, receive, send):
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"partial", "more_body": True})
    raise RuntimeError("boom mid-response")


async def no_response(scope, receive, send):
    return None


async def bad_header(scope, receive, send):
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"x-bad", b"a\r\nInjected: yes")],
        }
    )
    await send({"type": "http.response.body", "body": b"never"})


async def bad_header_retried(scope, receive, send):
    """Catches the refusal of its head and tries to send a body anyway."""
    await send({"type": "http.response.start", "status": 200, "headers": [(b"x-bad", b"\n")]})
    try:
        await send({"type": "http.response.body", "body": b"never"})
    except RuntimeError:
        pass
    await send({"type": "http.response.body", "body": b"still never"})


async def pathsend(scope, receive, send):
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.pathsend", "path": os.path.abspath(__file__)})


ROUTES = {
    "/": hello,
    "/scope": scope_route,
    "/echo": echo,
    "/stream": stream,
    "/counters": counters_route,
    "/pids": pids,
    "/endless": endless,
    "/wait-disconnect": wait_disconnect,
    "/sleep": sleepy,
    "/ignores-disconnect": ignores_disconnect,
    "/block": block,
    "/raise-before": raise_before,
    "/raise-after": raise_after,
    "/no-response": no_response,
    "/bad-header": bad_header,
    "/bad-header-retried": bad_header_retried,
    "/pathsend": pathsend,
}


async def ws_echo(scope, receive, send):
    """Echoes every message; records how the client left."""
    assert (await receive())["type"] == "websocket.connect"
    offered = scope["subprotocols"]
    await send({"type": "websocket.accept", "subprotocol": offered[0] if offered else None,
                "headers": [(b"x-ws", b"echo")]})
    while True:
        message = await receive()
        if message["type"] == "websocket.disconnect":
            counters["ws_close"] = message["code"]
            return
        if message.get("text") is not None:
            await send({"type": "websocket.send", "text": message["text"]})
        else:
            await send({"type": "websocket.send", "bytes": message["bytes"]})


async def ws_reject(scope, receive, send):
    await receive()
    await send({"type": "websocket.close"})


async def ws_deny(scope, receive, send):
    """The denial response extension: an HTTP answer instead of the handshake."""
    await receive()
    assert "websocket.http.response" in scope["extensions"]
    await send({"type": "websocket.http.response.start", "status": 401,
                "headers": [(b"www-authenticate", b"Bearer")]})
    await send({"type": "websocket.http.response.body", "body": b"no ", "more_body": True})
    await send({"type": "websocket.http.response.body", "body": b"token"})


async def ws_close(scope, receive, send):
    await receive()
    await send({"type": "websocket.accept"})
    await send({"type": "websocket.send", "text": "bye"})
    await send({"type": "websocket.close", "code": 4000, "reason": "done"})


async def ws_scope(scope, receive, send):
    await receive()
    await send({"type": "websocket.accept"})
    shown = {k: v for k, v in scope.items() if k != "state"}
    await send({"type": "websocket.send", "text": json.dumps(jsonable(shown))})
    await send({"type": "websocket.close"})


async def ws_flood(scope, receive, send):
    """Sends ?n 64 KiB messages, each send() awaited: a reader that stalls stalls us."""
    await receive()
    await send({"type": "websocket.accept"})
    counters["ws_sent"] = 0
    chunk = b"w" * 65536
    for _ in range(int(scope["query_string"])):
        await send({"type": "websocket.send", "bytes": chunk})
        counters["ws_sent"] += 1
    await send({"type": "websocket.close"})


WS_ROUTES = {"/ws/deny": ws_deny, "/ws/flood": ws_flood, "/ws/echo": ws_echo, "/ws/reject": ws_reject, "/ws/close": ws_close, "/ws/scope": ws_scope}


async def failing_startup(scope, receive, send):
    """Its lifespan startup fails with a message."""
    if scope["type"] == "lifespan":
        await receive()
        await send({"type": "lifespan.startup.failed", "message": "database unreachable"})
        return
    await reply(send, "unreachable")


async def no_lifespan(scope, receive, send):
    """Speaks HTTP only, as many small ASGI apps do."""
    if scope["type"] != "http":
        raise ValueError("only http is supported")
    await reply(send, "no lifespan here")


class AsgiClass:
    """An object whose __call__ is a coroutine function (as Starlette's are)."""

    async def __call__(self, scope, receive, send):
        await app(scope, receive, send)


instance = AsgiClass()


async def flaky_startup(scope, receive, send):
    """Its lifespan startup fails while the file $ASGI_FAIL_FLAG exists (a deploy
    whose start-up breaks)."""
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                if os.path.exists(os.environ["ASGI_FAIL_FLAG"]):
                    await send({"type": "lifespan.startup.failed", "message": "cache warm-up failed: marker-5521"})
                    return
                await send({"type": "lifespan.startup.complete"})
            else:
                await send({"type": "lifespan.shutdown.complete"})
                return
    await app(scope, receive, send)
