"""For tests/it/startup.rs: the names an application finds in `os.environ` (at import
and per request) and in a request's environ, to compare rgun's with Gunicorn's."""

import json
import os

AT_IMPORT = sorted(os.environ)


def application(environ, start_response):
    body = json.dumps(
        {"import": AT_IMPORT, "now": sorted(os.environ), "environ": sorted(environ)}
    ).encode()
    start_response("200 OK", [("Content-Type", "application/json")])
    return [body]
