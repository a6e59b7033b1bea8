"""ASGI apps for bench/bench.py's ASGI workloads (the same answer as apps.py's WSGI hello)."""

import asyncio

HELLO = b"Hello, World!"


async def hello(scope, receive, send):
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"text/plain"), (b"content-length", b"13")]})
    await send({"type": "http.response.body", "body": HELLO})


async def sleep10ms(scope, receive, send):
    if scope["type"] != "http":
        return
    await asyncio.sleep(0.01)
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"text/plain"), (b"content-length", b"13")]})
    await send({"type": "http.response.body", "body": HELLO})


async def ws_echo(scope, receive, send):
    """WebSocket echo (and the hello answer for plain HTTP, so servers can be probed)."""
    if scope["type"] == "http":
        return await hello(scope, receive, send)
    if scope["type"] != "websocket":
        return
    await receive()
    await send({"type": "websocket.accept"})
    while True:
        message = await receive()
        if message["type"] == "websocket.disconnect":
            return
        await send({"type": "websocket.send", "text": message.get("text"), "bytes": message.get("bytes")})
