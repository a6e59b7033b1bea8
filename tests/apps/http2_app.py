"""The HTTP/2 tests' application: /echo reports what it received as JSON, /big?n=N
answers N bytes in 64 KiB pieces, /sleep?ms=M answers after M milliseconds with the
thread that ran it, /wait?file=F creates F.started, then answers its pid once F
exists (at most 30 s)."""

import json
import os
import threading
import time
from urllib.parse import parse_qs


def application(environ, start_response):
    path = environ["PATH_INFO"]
    query = {k: v[0] for k, v in parse_qs(environ["QUERY_STRING"]).items()}
    if path == "/big":
        n = int(query["n"])
        start_response("200 OK", [("Content-Type", "application/octet-stream"), ("Content-Length", str(n))])
        piece = b"x" * 65536
        return (piece[: min(65536, n - i)] for i in range(0, n, 65536))
    if path == "/sleep":
        time.sleep(int(query.get("ms", "100")) / 1000)
        out = threading.current_thread().name.encode()
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [out]
    if path == "/wait":
        gate = query["file"]
        open(gate + ".started", "w").close()
        deadline = time.monotonic() + 30
        while not os.path.exists(gate) and time.monotonic() < deadline:
            time.sleep(0.02)
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [str(os.getpid()).encode()]
    body = environ["wsgi.input"].read()
    echoed = {
        "method": environ["REQUEST_METHOD"],
        "path_info": path,
        "query": environ["QUERY_STRING"],
        "protocol": environ["SERVER_PROTOCOL"],
        "scheme": environ["wsgi.url_scheme"],
        "host": environ.get("HTTP_HOST"),
        "headers": {k: v for k, v in environ.items() if k.startswith("HTTP_") or k in ("CONTENT_TYPE", "CONTENT_LENGTH")},
        "body": body.decode("latin-1"),
        "pid": os.getpid(),
    }
    out = json.dumps(echoed).encode()
    start_response("201 Created", [("Content-Type", "application/json"), ("X-App", "yes"), ("Connection", "keep-alive")])
    return [out]
