"""For tests/it/startup.rs: what an application sees of the server that runs it —
`SERVER_SOFTWARE` in `os.environ` when it is imported and when it serves, and in the
request's environ — the values applications test to tell that Gunicorn runs them."""

import json
import os

AT_IMPORT = os.environ.get("SERVER_SOFTWARE")


def application(environ, start_response):
    now = os.environ.get("SERVER_SOFTWARE")
    body = json.dumps(
        {
            "import": AT_IMPORT,
            "os_environ": now,
            "environ": environ.get("SERVER_SOFTWARE"),
            # The two idioms applications use.
            "contains_gunicorn": "gunicorn" in (now or ""),
            "starts_with_gunicorn": (now or "").startswith("gunicorn"),
        }
    ).encode()
    start_response(
        "200 OK",
        [("Content-Type", "application/json"), ("Content-Length", str(len(body)))],
    )
    return [body]
