"""A deployable application for the control-socket tests: the tests copy this file into
a temporary directory as `deployed.py`, with VERSION and the import-time hook rewritten
before each reload, and check which version answers.

GET /?sleep=SECONDS holds the request that long first (requests in flight during a
reload or a scale-down)."""

import os
import time

VERSION = "initial"

# IMPORT-HOOK


def application(environ, start_response):
    query = environ.get("QUERY_STRING", "")
    if query.startswith("sleep="):
        time.sleep(float(query[len("sleep="):]))
    body = ("%s %d" % (VERSION, os.getpid())).encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
