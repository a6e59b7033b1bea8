"""For the logging-on-reload tests: every request logs one INFO and one WARNING record
through `gunicorn.error` (the application's view of the server's error log) and is
answered with the worker's pid."""

import logging
import os


def application(environ, start_response):
    log = logging.getLogger("gunicorn.error")
    log.info("app info from %d", os.getpid())
    log.warning("app warning from %d", os.getpid())
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [str(os.getpid()).encode()]
