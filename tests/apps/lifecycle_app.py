"""An app for process-lifecycle tests: slow requests, pids, and an import that fails
while a marker file exists (a broken deploy)."""

import os
import time

marker = os.environ.get("RGUN_FAIL_MARKER")
if marker and os.path.exists(marker):
    raise RuntimeError("broken deploy: marker file present")


BALLAST = []


def application(environ, start_response):
    path = environ["PATH_INFO"]
    if path == "/sleep":
        time.sleep(float(environ["QUERY_STRING"] or "1"))
        body = b"slept"
    elif path == "/pid":
        body = str(os.getpid()).encode()
    elif path == "/grow":
        # Hold on to 40 MiB of touched memory (for --max-worker-rss).
        BALLAST.append(bytearray(b"x") * (40 * 1024 * 1024))
        body = b"grown"
    elif path == "/crash":
        os._exit(1)
    else:
        body = b"ok"
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
