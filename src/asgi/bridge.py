"""Python-side helpers of rgun's ASGI bridge, loaded into each ASGI worker.

Only what asyncio makes simpler in Python lives here: the loop's choice, the
exception a send() to a departed client raises, and the lifespan protocol (run once
per worker). Scopes, receive() and send() are Rust (`asgi::cycle`).
"""

import asyncio
import traceback


class ClientDisconnected(OSError):
    """Raised by send() once the client has left (ASGI spec 2.4)."""


def canceller(loop, grace):
    """What a request's task gets once its client left: `grace` seconds to finish
    (--asgi-disconnect-grace-period), then a cancellation."""

    def cancel_after_grace(task):
        if not task.done():
            loop.call_later(grace, task.cancel)

    return cancel_after_grace


def new_event_loop(choice):
    """`auto`: uvloop when installed, else asyncio's default loop."""
    if choice in ("auto", "uvloop"):
        try:
            import uvloop
        except ImportError:
            if choice == "uvloop":
                raise
        else:
            return uvloop.new_event_loop()
    return asyncio.new_event_loop()


class Lifespan:
    """The ASGI lifespan protocol as Uvicorn runs it. `mode` is "auto" or "on".
    After `startup()`: `failed` (with `message`), or `unsupported` (auto mode, the
    application raised before answering), or ready, with `state` filled."""

    def __init__(self, app, mode):
        self.app = app
        self.mode = mode
        self.state = {}
        self.queue = asyncio.Queue()
        self.started = asyncio.Event()
        self.stopped = asyncio.Event()
        self.failed = False
        self.unsupported = False
        self.errored = False
        self.message = ""
        self.task = None

    async def startup(self):
        self.task = asyncio.get_running_loop().create_task(self._main())
        await self.queue.put({"type": "lifespan.startup"})
        await self.started.wait()
        if self.errored and self.mode == "on":
            self.failed = True

    async def shutdown(self):
        """Returns the failure's message, or None."""
        if self.errored or self.task is None:
            return None
        await self.queue.put({"type": "lifespan.shutdown"})
        await self.stopped.wait()
        if self.failed or (self.errored and self.mode == "on"):
            return self.message or "Application shutdown failed."
        return None

    async def _main(self):
        scope = {
            "type": "lifespan",
            "asgi": {"version": "3.0", "spec_version": "2.0"},
            "state": self.state,
        }
        try:
            await self.app(scope, self._receive, self._send)
        except BaseException:
            self.errored = True
            if not self.failed:
                if self.mode == "auto" and not self.started.is_set():
                    self.unsupported = True
                else:
                    self.message = "Exception in 'lifespan' protocol\n" + traceback.format_exc()
        finally:
            self.started.set()
            self.stopped.set()

    async def _send(self, message):
        kind = message["type"]
        if kind == "lifespan.startup.complete":
            self.started.set()
        elif kind == "lifespan.startup.failed":
            self.failed = True
            self.message = message.get("message", "")
            self.started.set()
        elif kind == "lifespan.shutdown.complete":
            self.stopped.set()
        elif kind == "lifespan.shutdown.failed":
            self.failed = True
            self.message = message.get("message", "")
            self.stopped.set()
        else:
            raise RuntimeError("Unexpected ASGI lifespan message %r" % kind)

    async def _receive(self):
        return await self.queue.get()
