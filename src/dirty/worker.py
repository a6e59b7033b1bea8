"""The Python side of an rgun dirty worker: which dirty applications this worker
holds, and one call's life (an action's result, or a sync or async generator's chunks,
or the error the caller gets). Frames are written by the Rust side through `send`.

The applications are the user's `gunicorn.dirty.DirtyApp` subclasses, unchanged; this
file imports nothing of Gunicorn's server code."""

import asyncio
import importlib
import inspect
import logging
import threading
import traceback

log = logging.getLogger("gunicorn.error")


def _class(path):
    module, _, name = path.rpartition(":")
    cls = getattr(importlib.import_module(module), name)
    if not isinstance(cls, type):
        raise TypeError("%s is not a class" % path)
    return cls


def load_apps(specs, index):
    """The applications worker number `index` (0-based) holds: every app without a
    limit, and an app limited to N workers (`module:Class:N`, else its class's
    `workers` attribute) on workers 0..N-1 — so a replacement holds what the worker it
    replaces held. All are instantiated, then each one's init() runs."""
    held = {}
    for path, limit in specs:
        cls = _class(path)
        if limit is None:
            limit = getattr(cls, "workers", None)
        if limit is not None and index >= limit:
            continue
        held[path] = cls()
    for path, app in held.items():
        app.init()
        log.info("Initialized dirty app: %s", path)
    return held


def close_apps(apps):
    for path, app in apps.items():
        try:
            app.close()
        except Exception:
            log.exception("Error closing dirty app %s", path)


def _error(kind, message, **details):
    return {"error_type": kind, "message": message,
            "details": {k: v for k, v in details.items() if v}}


class Calls:
    """Runs calls on this worker's applications, one per pool thread at a time."""

    def __init__(self, apps):
        self.apps = apps
        self.local = threading.local()

    def run(self, app_path, action, args, kwargs, send):
        app = self.apps.get(app_path)
        if app is None:
            send("error", _error("DirtyAppNotFoundError", "Dirty app not found: %s" % app_path,
                                 app_path=app_path))
            return
        try:
            result = app(action, *args, **kwargs)
            if inspect.isgenerator(result):
                self._stream(result, send)
            elif inspect.isasyncgen(result):
                self._stream_async(result, send)
            else:
                send("response", result)
        except Exception as e:
            tb = traceback.format_exc()
            log.error("Error executing %s.%s: %s\n%s", app_path, action, e, tb)
            send("error", _error("DirtyAppError", str(e), app_path=app_path, action=action,
                                 traceback=tb))

    def _stream(self, gen, send):
        try:
            for chunk in gen:
                send("chunk", chunk)
            send("end", None)
        except Exception as e:
            self._stream_failed(e, send)
        finally:
            gen.close()

    def _stream_async(self, agen, send):
        loop = getattr(self.local, "loop", None)
        if loop is None:
            loop = self.local.loop = asyncio.new_event_loop()
        try:
            while True:
                try:
                    chunk = loop.run_until_complete(agen.__anext__())
                except StopAsyncIteration:
                    break
                send("chunk", chunk)
            send("end", None)
        except Exception as e:
            self._stream_failed(e, send)
        finally:
            loop.run_until_complete(agen.aclose())

    @staticmethod
    def _stream_failed(e, send):
        tb = traceback.format_exc()
        log.error("Error during streaming: %s\n%s", e, tb)
        send("error", _error("DirtyAppError", str(e), traceback=tb))
