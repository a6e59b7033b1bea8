"""The demo application the README runs: `rgun demo.app:application`."""

import json


def application(environ, start_response):
    path = environ.get("PATH_INFO", "/")
    if path == "/json":
        body = json.dumps({"hello": "world", "server": environ.get("SERVER_SOFTWARE")}).encode()
        start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
        return [body]
    body = b"Hello, World!\n"
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
