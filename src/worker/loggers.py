"""The standard library's `gunicorn.error` and `gunicorn.access` loggers in a worker,
configured as a Gunicorn worker finds them, so an application that borrows their
handlers (`app.logger.handlers = logging.getLogger("gunicorn.error").handlers`) writes
lines in the server's format to the server's logs. rgun's own records are written from
Rust; these serve only what the application logs through them."""

import logging
import logging.handlers
import sys

ERROR_FORMAT = "%(asctime)s [%(process)d] [%(levelname)s] %(message)s"
ERROR_DATE_FORMAT = "[%Y-%m-%d %H:%M:%S %z]"
LEVELS = {
    "critical": logging.CRITICAL,
    "error": logging.ERROR,
    "warning": logging.WARNING,
    "info": logging.INFO,
    "debug": logging.DEBUG,
}


def handler_for(path, stream):
    """A stream handler for "-", else a file handler that follows a rotated file (a
    rotation then needs no reopen from us: USR1 reopens rgun's own descriptors)."""
    if path == "-":
        return logging.StreamHandler(stream)
    return logging.handlers.WatchedFileHandler(path)


def set_up(level, error_path, access_path, error_format=None, error_datefmt=None, access_format=None):
    """The formats are a logging configuration's (`logconfig_dict`), else Gunicorn's."""
    error = logging.getLogger("gunicorn.error")
    error.propagate = False
    error.setLevel(LEVELS.get(level.lower(), logging.INFO))
    # fd 2 is the error log: "-" writes where rgun's own records go.
    handler = handler_for(error_path, sys.stderr)
    if error_format is None:
        handler.setFormatter(logging.Formatter(ERROR_FORMAT, ERROR_DATE_FORMAT))
    else:
        handler.setFormatter(logging.Formatter(error_format, error_datefmt))
    error.addHandler(handler)

    access = logging.getLogger("gunicorn.access")
    access.propagate = False
    access.setLevel(logging.INFO)
    if access_path is not None:
        # sys.stdout is the error log in a worker; "-" is the process's own stdout.
        handler = handler_for(access_path, sys.__stdout__)
        handler.setFormatter(logging.Formatter(access_format or "%(message)s"))
        access.addHandler(handler)
