"""Endpoints that exercise PEP 3333 corners; see tests/it/wsgi.rs."""

import json
import os
import sys
import threading
import warnings
from wsgiref.validate import WSGIWarning, validator

# wsgiref's validator warns about what it dislikes; any warning is a failure here.
warnings.simplefilter("error", WSGIWarning)

CLOSED = []
LOCK = threading.Lock()


def _json(start_response, obj, status="200 OK"):
    body = json.dumps(obj).encode()
    start_response(status, [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
    return [body]


class Tracked:
    """An iterable whose close() we can observe."""

    def __init__(self, chunks, tag):
        self.chunks = chunks
        self.tag = tag

    def __iter__(self):
        return iter(self.chunks)

    def close(self):
        with LOCK:
            CLOSED.append(self.tag)


def _validated(environ, start_response):
    inp = environ["wsgi.input"]
    first = inp.readline(5)
    rest = inp.read(-1)
    environ["wsgi.errors"].write("validated request\n")
    environ["wsgi.errors"].flush()
    start_response("200 OK", [("Content-Type", "text/plain")])
    return Tracked([b"ok:", first, rest], "validated")


validated_app = validator(_validated)


def application(environ, start_response):
    path = environ["PATH_INFO"]
    if path.startswith("/validate"):
        return validated_app(environ, start_response)
    if path == "/environ":
        keys = ["REQUEST_METHOD", "SCRIPT_NAME", "PATH_INFO", "QUERY_STRING", "SERVER_NAME", "SERVER_PORT",
                "SERVER_PROTOCOL", "REMOTE_ADDR", "REMOTE_PORT", "wsgi.url_scheme", "wsgi.multithread",
                "wsgi.multiprocess", "wsgi.run_once", "RAW_URI", "CONTENT_TYPE", "CONTENT_LENGTH"]
        out = {k: environ.get(k) for k in keys}
        out["wsgi.version"] = list(environ["wsgi.version"])
        out["headers"] = {k: v for k, v in environ.items() if k.startswith("HTTP_")}
        out["types_ok"] = type(environ) is dict and all(type(k) is str for k in environ)
        return _json(start_response, out)
    if path == "/input":
        inp = environ["wsgi.input"]
        out = {
            "read3": inp.read(3).decode(),
            "readline": inp.readline().decode(),
            "readline_limited": inp.readline(2).decode(),
            "readlines": [l.decode() for l in inp.readlines()],
            "after": inp.read().decode(),
        }
        return _json(start_response, out)
    if path == "/iterate_input":
        lines = [l.decode() for l in environ["wsgi.input"]]
        return _json(start_response, {"lines": lines})
    if path == "/write":
        write = start_response("200 OK", [("Content-Type", "text/plain")])
        write(b"written-")
        return [b"returned"]
    if path == "/exc_info":
        start_response("200 OK", [("Content-Type", "text/plain")])
        try:
            raise ValueError("replaced")
        except ValueError:
            start_response("503 Service Unavailable", [("Content-Type", "text/plain")], sys.exc_info())
        return [b"replaced by exc_info"]
    if path == "/error":
        raise RuntimeError("boom in the app")
    if path == "/error_midstream":
        def gen():
            yield b"partial"
            raise RuntimeError("boom after headers")
        start_response("200 OK", [("Content-Type", "text/plain")])
        return gen()
    if path == "/bad_header":
        start_response("200 OK", [("X-Evil", "a\r\nSet-Cookie: pwned=1")])
        return [b"should not be sent"]
    if path == "/pieces":
        # Small and large chunks, more than one sendmsg takes; ?short declares a
        # Content-Length below the body's, which must be cut there.
        chunks = [bytes([65 + i % 26]) * (400_000 if i % 3 == 0 else 100 + i) for i in range(40)]
        length = sum(map(len, chunks))
        if environ["QUERY_STRING"] == "short":
            length -= 50_000
        start_response("200 OK", [("Content-Length", str(length))])
        return chunks
    if path == "/latin1_header":
        start_response("200 OK", [("X-Name", "caf\u00e9"), ("Content-Length", "0")])
        return []
    if path == "/wide_header":
        start_response("200 OK", [("X-Name", "\u20ac")])
        return [b"should not be sent"]
    if path == "/stream":
        def gen():
            for i in range(5):
                yield ("part%d;" % i).encode()
        start_response("200 OK", [("Content-Type", "text/plain")])
        return gen()
    if path == "/lazy_start":
        def gen():
            start_response("201 Created", [("Content-Type", "text/plain")])
            yield b""
            yield b"lazy"
        return gen()
    if path == "/file":
        f = open(os.environ["RGUN_TEST_FILE"], "rb")
        start_response("200 OK", [("Content-Type", "application/octet-stream")])
        return environ["wsgi.file_wrapper"](f, 8192)
    if path == "/tracked":
        start_response("200 OK", [("Content-Type", "text/plain")])
        return Tracked([b"x" * 65536] * 64, "tracked")
    if path == "/closed":
        with LOCK:
            return _json(start_response, {"closed": list(CLOSED)})
    if path == "/status":
        code = environ["QUERY_STRING"]
        start_response(code + " Whatever", [("Content-Type", "text/plain")])
        return [b"body that must not be sent"]
    if path == "/print":
        print("hello from print()")
        return _json(start_response, {})
    if path == "/echo":
        body = environ["wsgi.input"].read()
        start_response("200 OK", [("Content-Type", "application/octet-stream"), ("Content-Length", str(len(body)))])
        return [body]
    return _json(start_response, {"path": path}, "404 Not Found")
