"""Reports which interpreter and which rgun a worker runs (tests/it/packaging.rs)."""

import json
import os
import sys

import rgun


def application(environ, start_response):
    body = json.dumps(
        {
            "executable": sys.executable,
            "prefix": sys.prefix,
            "base_prefix": sys.base_prefix,
            "virtual_env": os.environ.get("VIRTUAL_ENV"),
            "rgun": os.path.dirname(rgun.__file__),
            "version": "%d.%d" % sys.version_info[:2],
            "pid": os.getpid(),
        }
    ).encode()
    start_response("200 OK", [("Content-Type", "application/json")])
    return [body]
