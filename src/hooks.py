"""Gunicorn server hooks for rgun workers: loads the configuration file's hook
functions and the objects they receive (server, worker, req, resp), with the attributes
real configurations use. See ARCHITECTURE.md for the supported set."""

import importlib
import logging
import os
import runpy
import sys
import time

WORKER_HOOKS = ("post_fork", "post_worker_init", "pre_request", "post_request", "worker_int", "worker_abort", "worker_exit",
                "dirty_post_fork", "dirty_worker_init")


def _logger():
    log = logging.getLogger("rgun.hooks")
    if not log.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("[%(asctime)s] [%(process)d] [%(levelname)s] %(message)s", "%Y-%m-%d %H:%M:%S %z"))
        log.addHandler(handler)
        log.setLevel(logging.DEBUG)
        log.propagate = False
    return log


class Config:
    """`server.cfg` / `worker.cfg`: settings by their Gunicorn names."""

    def __init__(self, settings):
        self.__dict__.update(settings)

    def __getattr__(self, name):
        return None


class Server:
    def __init__(self, settings):
        self.cfg = Config(settings)
        self.log = _logger()
        self.pid = os.getppid()
        self.num_workers = settings.get("workers")
        self.app = settings.get("wsgi_app")
        self.proc_name = settings.get("wsgi_app")


class Worker:
    def __init__(self, settings, age):
        self.cfg = Config(settings)
        self.log = _logger()
        self.pid = os.getpid()
        self.ppid = os.getppid()
        self.age = age
        self.alive = True
        self.booted = False
        self.started = time.time()


class Request:
    def __init__(self, method, uri, path, query, version, headers, remote_addr):
        self.method = method
        self.uri = uri
        self.path = path
        self.query = query
        self.version = version
        self.headers = headers
        self.remote_addr = remote_addr
        self.scheme = "http"

    def __repr__(self):
        return "<Request %s %s>" % (self.method, self.uri)


class Response:
    def __init__(self, status, headers, sent):
        self.status = status
        self.status_code = int(status.split(None, 1)[0]) if status else None
        self.headers = headers
        self.sent = sent
        self.response_length = sent


class Hooks:
    def __init__(self, location, settings, age):
        if location.startswith("python:"):
            namespace = vars(importlib.import_module(location[len("python:"):]))
        else:
            namespace = runpy.run_path(location, run_name="__config__")
        self.functions = {name: namespace[name] for name in WORKER_HOOKS if callable(namespace.get(name))}
        self.server = Server(settings)
        self.worker = Worker(settings, age)
        # worker_abort runs from the worker's time-out watcher (worker/abort.rs).

    def names(self):
        return sorted(self.functions)

    def call(self, name, *args):
        fn = self.functions.get(name)
        if fn is None:
            return
        try:
            if name in ("worker_exit", "post_fork", "dirty_post_fork"):
                # dirty_post_fork's first argument is Gunicorn's dirty arbiter; in
                # rgun the master supervises the pool, so it is the server object.
                fn(self.server, self.worker)
            else:
                fn(self.worker, *args)
        except Exception:
            _logger().exception("Exception in %s hook", name)


MASTER_HOOKS = ("on_starting", "on_reload", "when_ready", "pre_fork", "pre_exec", "child_exit", "nworkers_changed", "on_exit",
                "on_dirty_starting", "dirty_worker_exit")


class MasterWorker:
    """The `worker` argument of master-side hooks: what the master knows of it."""

    def __init__(self, pid, age, settings, app_paths=None):
        self.pid = pid
        self.age = age
        self.cfg = Config(settings)
        self.log = _logger()
        if app_paths is not None:
            self.app_paths = app_paths

    def __repr__(self):
        return "<Worker %s>" % self.pid


def serve_master_hooks(location, settings, fd):
    """The master's hook host: runs in a child of the master (which stays Python-free),
    one JSON request per line, one `ok` line back when the hook has returned."""
    import json
    import socket

    if location.startswith("python:"):
        namespace = vars(importlib.import_module(location[len("python:"):]))
    else:
        namespace = runpy.run_path(location, run_name="__config__")
    functions = {name: namespace[name] for name in MASTER_HOOKS if callable(namespace.get(name))}
    server = Server(settings)
    conn = socket.socket(fileno=fd)
    reader = conn.makefile("rb")
    for line in reader:
        request = json.loads(line)
        fn = functions.get(request["hook"])
        if fn is not None:
            try:
                w = request.get("worker")
                worker = MasterWorker(w["pid"], w["age"], settings, w.get("app_paths")) if w else None
                name = request["hook"]
                if name in ("pre_fork", "child_exit", "dirty_worker_exit"):
                    fn(server, worker)
                elif name == "nworkers_changed":
                    fn(server, request["new"], request["old"])
                else:
                    fn(server)
            except Exception:
                _logger().exception("Exception in %s hook", request["hook"])
        conn.sendall(b"ok\n")
