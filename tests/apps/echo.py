"""Echoes what the application received, as JSON: the request-parsing tests compare it
with what the client sent."""

import json
import os


def application(environ, start_response):
    body = environ["wsgi.input"].read()
    echoed = {
        "method": environ["REQUEST_METHOD"],
        "raw_uri": environ.get("RAW_URI"),
        "path_info": environ["PATH_INFO"],
        "script_name": environ["SCRIPT_NAME"],
        "query": environ["QUERY_STRING"],
        "protocol": environ["SERVER_PROTOCOL"],
        "scheme": environ["wsgi.url_scheme"],
        "server_name": environ["SERVER_NAME"],
        "server_port": environ["SERVER_PORT"],
        "remote_addr": environ["REMOTE_ADDR"],
        "headers": {k: v for k, v in environ.items() if k.startswith("HTTP_") or k in ("CONTENT_TYPE", "CONTENT_LENGTH")},
        "body": body.decode("latin-1"),
        "multithread": environ["wsgi.multithread"],
        "multiprocess": environ["wsgi.multiprocess"],
        "client_dn": environ.get("SSL_CLIENT_S_DN"),
        "pid": os.getpid(),
    }
    out = json.dumps(echoed).encode()
    start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(out)))])
    return [out]
