"""The observability tests' application: a status per path, and a request that sleeps
(for `rgunctl stack`)."""

import time


def application(environ, start_response):
    path = environ["PATH_INFO"]
    if path == "/missing":
        start_response("404 Not Found", [("Content-Type", "text/plain")])
        return [b"no such thing\n"]
    if path == "/boom":
        raise RuntimeError("boom, on purpose")
    if path == "/sleep":
        time.sleep(float(environ.get("QUERY_STRING") or "5"))
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"ok\n"]
