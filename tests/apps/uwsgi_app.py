"""The same three routes as WSGI (`application`) and ASGI (`app`), for the uwsgi tests
behind nginx: what the request looked like to the application, a body's digest, and
a large streamed response."""

import hashlib
import json

BIG_CHUNK = b"0123456789abcdef" * 4096  # 64 KiB


def big_chunks(query):
    n = int(query.removeprefix("chunks=") or "64")
    for _ in range(n):
        yield BIG_CHUNK


def described(method, path, query, scheme, protocol, headers, body, remote):
    return json.dumps(
        {
            "method": method,
            "path": path,
            "query": query,
            "scheme": scheme,
            "protocol": protocol,
            "headers": headers,
            "body_length": len(body),
            "body_sha256": hashlib.sha256(body).hexdigest(),
            "remote_addr": remote,
        }
    ).encode()


def application(environ, start_response):
    path = environ["PATH_INFO"]
    if path == "/big":
        # No Content-Length: over uwsgi the end of the body is the connection's close.
        start_response("200 OK", [("Content-Type", "application/octet-stream")])
        return big_chunks(environ["QUERY_STRING"])
    body = environ["wsgi.input"].read()
    headers = {
        k: v
        for k, v in environ.items()
        if k.startswith("HTTP_") or k in ("CONTENT_TYPE", "CONTENT_LENGTH")
    }
    out = described(
        environ["REQUEST_METHOD"],
        path,
        environ["QUERY_STRING"],
        environ["wsgi.url_scheme"],
        environ["SERVER_PROTOCOL"],
        headers,
        body,
        environ["REMOTE_ADDR"],
    )
    start_response(
        "200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(out)))]
    )
    return [out]


async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            await send({"type": message["type"] + ".complete"})
            if message["type"] == "lifespan.shutdown":
                return
    if scope["path"] == "/big":
        await send({"type": "http.response.start", "status": 200, "headers": []})
        for chunk in big_chunks(scope["query_string"].decode()):
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b""})
        return
    chunks = []
    while True:
        message = await receive()
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            break
    headers = {}
    for name, value in scope["headers"]:
        headers[name.decode("latin-1")] = value.decode("latin-1")
    out = described(
        scope["method"],
        scope["path"],
        scope["query_string"].decode("latin-1"),
        scope["scheme"],
        "HTTP/" + scope["http_version"],
        headers,
        b"".join(chunks),
        scope["client"][0] if scope["client"] else None,
    )
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"application/json")],
        }
    )
    await send({"type": "http.response.body", "body": out})
