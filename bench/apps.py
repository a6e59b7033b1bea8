"""Benchmark WSGI apps, served identically by rgun, Granian and Gunicorn.

Each workload is a module-level callable: `apps:hello`, `apps:k64`, ... The Flask
workload lives in `flask_apps.py`, so that the plain ones do not pay for importing
Flask (a hello-world app is a hello-world app).
"""

import hashlib
import time



def _plain(start_response, body, ctype=b"text/plain"):
    start_response("200 OK", [("Content-Type", ctype.decode()), ("Content-Length", str(len(body)))])
    return [body]


def hello(environ, start_response):
    return _plain(start_response, b"Hello, World!\n")




_BODY_64K = b"x" * 65536


def k64(environ, start_response):
    return _plain(start_response, _BODY_64K, b"application/octet-stream")


def post_1m(environ, start_response):
    """Reads the whole request body and answers with its sha256 and length."""
    stream, h, n = environ["wsgi.input"], hashlib.sha256(), 0
    left = int(environ.get("CONTENT_LENGTH") or 0)
    while left > 0 and (chunk := stream.read(min(left, 65536))):
        h.update(chunk)
        n += len(chunk)
        left -= len(chunk)
    return _plain(start_response, f"{n} {h.hexdigest()}\n".encode())


def sleep10ms(environ, start_response):
    time.sleep(0.01)
    return _plain(start_response, b"slept 10ms\n")


def sleep20ms(environ, start_response):
    """A request that waits 20 ms on I/O (bench/burst.py's endpoint)."""
    time.sleep(0.02)
    return _plain(start_response, b"slept 20ms\n")
