"""A dirty-arbiter application written for Gunicorn 25+ (the shape of Gunicorn's
examples/dirty_example, written for rgun's tests): dirty apps that keep state, and a
WSGI application whose routes call them through `gunicorn.dirty` — sync, async and
streaming calls, per-app allocation, the stash, errors, time-outs and crashes. It runs
unchanged under Gunicorn 27 and rgun; answers hold no pids or times, so both servers'
answers can be compared."""

import asyncio
import json
import os
import time
from urllib.parse import parse_qs

from gunicorn.dirty import DirtyApp, get_dirty_client, get_dirty_client_async, stash

ML = "dirty_example:MLApp"
COMPUTE = "dirty_example:ComputeApp"
SESSION = "dirty_example:SessionApp"
HEAVY = "dirty_example:HeavyApp"
TOOLS = "dirty_example:ToolsApp"


class MLApp(DirtyApp):
    """A model "loaded" once per worker and used by every call."""

    def __init__(self):
        self.models = {}

    def init(self):
        self.models["default"] = {"version": "1.0.0", "parameters": 1000000}

    def load_model(self, name):
        if name in self.models:
            return {"status": "already_loaded", "name": name}
        self.models[name] = {"version": "1.0.0", "parameters": 1000}
        return {"status": "loaded", "name": name}

    def inference(self, model_name, input_data):
        if model_name not in self.models:
            raise ValueError("Model not loaded: %s" % model_name)
        return {"model": model_name, "prediction": input_data[::-1], "confidence": 0.95,
                "raw": input_data.encode()}

    def close(self):
        self.models.clear()


class ComputeApp(DirtyApp):
    def fibonacci(self, n):
        a, b = 0, 1
        for _ in range(n):
            a, b = b, a + b
        return {"n": n, "result": a}

    def prime_check(self, n):
        return {"n": n, "is_prime": n > 1 and all(n % i for i in range(2, int(n ** 0.5) + 1))}

    def pid(self):
        return os.getpid()


class SessionApp(DirtyApp):
    """Shared state through the stash: any worker sees what another stored."""

    def init(self):
        if not stash.exists("counters", "requests"):
            stash.put("counters", "requests", 0)

    def login(self, user_id, user_data):
        stash.put("sessions", "user:%s" % user_id, {"user_id": user_id, "data": user_data})
        self._count()
        return {"status": "ok"}

    def get_session(self, user_id):
        self._count()
        return {"session": stash.get("sessions", "user:%s" % user_id)}

    def list_sessions(self):
        keys = stash.keys("sessions", pattern="user:*")
        return {"keys": keys, "sessions": [stash.get("sessions", k) for k in keys]}

    def logout(self, user_id):
        return {"deleted": stash.delete("sessions", "user:%s" % user_id)}

    def stats(self):
        return {"requests": stash.get("counters", "requests", 0),
                "tables": sorted(stash.tables()),
                "info": stash.info("sessions")}

    def _count(self):
        stash.put("counters", "requests", stash.get("counters", "requests", 0) + 1)


class HeavyApp(DirtyApp):
    """Held by one worker only (the class says so; `module:Class:N` may too)."""

    workers = 1

    def pid(self):
        return os.getpid()


class ToolsApp(DirtyApp):
    """Streams, failures, a slow call and a crash."""

    def count(self, n):
        for i in range(n):
            yield "token-%d" % i

    async def count_async(self, n):
        for i in range(n):
            await asyncio.sleep(0)
            yield {"i": i}

    def fail_midway(self):
        yield "first"
        raise RuntimeError("stream broke")

    def boom(self):
        raise ValueError("boom")

    def sleep(self, seconds):
        time.sleep(seconds)
        return "slept %s" % seconds

    def crash(self):
        os._exit(1)

    def echo(self, *args, **kwargs):
        return {"args": list(args), "kwargs": kwargs}

    def bad_result(self):
        return object()

    def bloat(self, mib):
        """Keeps `mib` MiB written (so resident) for the rest of this worker's life."""
        self.ballast = b"x" * (mib << 20)
        return os.getpid()


def _error(e):
    return {"type": type(e).__name__, "message": getattr(e, "message", str(e)),
            "details": sorted(getattr(e, "details", {}) or {})}


def _jsonable(v):
    if isinstance(v, bytes):
        return {"bytes": v.decode("latin-1")}
    if isinstance(v, dict):
        return {k: _jsonable(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_jsonable(x) for x in v]
    return v


async def _async_calls(q):
    client = await get_dirty_client_async()
    fib = await client.execute_async(COMPUTE, "fibonacci", int(q.get("n", "10")))
    chunks = [c async for c in client.stream_async(TOOLS, "count_async", 3)]
    return {"fibonacci": fib, "chunks": chunks}


def route(path, q):
    client = get_dirty_client()
    if path == "/load":
        return client.execute(ML, "load_model", q.get("name", "m1"))
    if path == "/inference":
        return client.execute(ML, "inference", q.get("model", "default"), q.get("data", "abc"))
    if path == "/fibonacci":
        return client.execute(COMPUTE, "fibonacci", int(q.get("n", "10")))
    if path == "/prime":
        return client.execute(COMPUTE, "prime_check", n=int(q.get("n", "17")))
    if path == "/echo":
        return client.execute(TOOLS, "echo", 1, 2.5, None, True, [1, "x"], b"\x00\xff", k={"a": [1]})
    if path == "/async":
        return asyncio.run(_async_calls(q))
    if path == "/stream":
        return list(client.stream(TOOLS, "count", int(q.get("n", "3"))))
    if path == "/stream_fail":
        got = []
        try:
            for chunk in client.stream(TOOLS, "fail_midway"):
                got.append(chunk)
        except Exception as e:
            return {"got": got, "error": _error(e)}
        return {"got": got}
    if path == "/alloc":
        light = {client.execute(COMPUTE, "pid") for _ in range(8)}
        heavy = {client.execute(HEAVY, "pid") for _ in range(8)}
        return {"light_workers": len(light), "heavy_workers": len(heavy)}
    if path == "/session/login":
        return client.execute(SESSION, "login", user_id=q.get("user_id", "1"),
                              user_data={"name": q.get("name", "anon")})
    if path == "/session/get":
        return client.execute(SESSION, "get_session", user_id=q.get("user_id", "1"))
    if path == "/session/list":
        return client.execute(SESSION, "list_sessions")
    if path == "/session/logout":
        return client.execute(SESSION, "logout", q.get("user_id", "1"))
    if path == "/session/stats":
        return client.execute(SESSION, "stats")
    if path == "/stash/direct":
        stash.put("web", "k", [1, 2])
        return {"value": stash.get("web", "k"), "exists": stash.exists("web", "k"),
                "missing_table": stash.exists("nope")}
    if path == "/stash/missing":
        return {"value": stash.get("web", "absent", "fallback")}
    if path == "/sleep":
        return client.execute(TOOLS, "sleep", float(q.get("s", "0.1")))
    if path == "/crash":
        return client.execute(TOOLS, "crash")
    if path == "/boom":
        return client.execute(TOOLS, "boom")
    if path == "/bloat":
        return client.execute(TOOLS, "bloat", int(q.get("mib", "64")))
    if path == "/bad_result":
        return client.execute(TOOLS, "bad_result")
    if path == "/unknown_app":
        return client.execute("dirty_example:Nope", "x")
    if path == "/unknown_action":
        return client.execute(TOOLS, "no_such_action")
    return None


def app(environ, start_response):
    q = {k: v[0] for k, v in parse_qs(environ.get("QUERY_STRING", "")).items()}
    try:
        result = {"ok": _jsonable(route(environ["PATH_INFO"], q))}
    except Exception as e:
        result = {"error": _error(e)}
    body = json.dumps(result, sort_keys=True).encode()
    start_response("200 OK", [("Content-Type", "application/json"),
                              ("Content-Length", str(len(body)))])
    return [body]
