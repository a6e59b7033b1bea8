"""The application behind the slow/hostile-client tests (tests/it/hostile.rs).

Endpoints:
  /ping           a tiny 200 "pong": the honest request whose latency is measured.
  /digest         reads wsgi.input in 64 KiB pieces; answers "<length> <sha256 hex>".
  /stream?n=N     a streamed response of N 64 KiB chunks (no Content-Length) whose
                  iterable records its close() call and how many chunks were produced.
  /big            a 32 MiB body held in memory (one module-level bytes object), as a
                  one-item list.
  /closed         JSON list of the records left by the /stream iterables so far.
  /work?ms=N      sleeps N milliseconds, then a tiny 200 "done" (a request that costs
                  the worker time, for the pipelining-fairness test).

Runs with one worker, so module-level state is shared by all requests of a test.
"""

import hashlib
import json
import time

# One record per /stream response: {"tag": ..., "produced": n, "closed": bool}.
STREAMS = []

CHUNK = b"x" * 65536
# The in-memory body of /big: made once, so every response shares it.
BIG = b"y" * (32 << 20)


class Stream:
    """A response iterable that notes how far it got and whether close() was called."""

    def __init__(self, tag, chunks):
        self.record = {"tag": tag, "produced": 0, "wanted": chunks, "closed": False}
        STREAMS.append(self.record)

    def __iter__(self):
        for _ in range(self.record["wanted"]):
            self.record["produced"] += 1
            yield CHUNK

    def close(self):
        self.record["closed"] = True


def _query(environ):
    out = {}
    for part in environ.get("QUERY_STRING", "").split("&"):
        if "=" in part:
            k, v = part.split("=", 1)
            out[k] = v
    return out


def application(environ, start_response):
    path = environ["PATH_INFO"]
    if path == "/ping":
        body = b"pong"
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
        return [body]
    if path == "/digest":
        stream = environ["wsgi.input"]
        h = hashlib.sha256()
        length = 0
        pieces = 0
        while True:
            piece = stream.read(65536)
            if not piece:
                break
            if len(piece) > 65536:
                raise AssertionError("read(65536) returned %d bytes" % len(piece))
            pieces += 1
            length += len(piece)
            h.update(piece)
        body = ("%d %s %d" % (length, h.hexdigest(), pieces)).encode()
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
        return [body]
    if path == "/stream":
        q = _query(environ)
        start_response("200 OK", [("Content-Type", "application/octet-stream")])
        return Stream(q.get("tag", ""), int(q.get("n", "16")))
    if path == "/big":
        start_response("200 OK", [("Content-Type", "application/octet-stream"), ("Content-Length", str(len(BIG)))])
        return [BIG]
    if path == "/work":
        time.sleep(int(_query(environ).get("ms", "1")) / 1000)
        body = b"done"
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
        return [body]
    if path == "/closed":
        body = json.dumps(STREAMS).encode()
        start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
        return [body]
    body = b"not found"
    start_response("404 Not Found", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
