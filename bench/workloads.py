"""What bench/bench.py measures: the servers of each interface and the workloads
(app, interface, wrk arguments, threads, connection counts, transport), shared by the
runner (bench.py) and the report (report.py)."""

import os

BENCH = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(BENCH)
WORKERS = 2

# The servers of each interface, in the order they run within a round.
SERVERS = {"wsgi": ["rgun", "Granian", "Gunicorn"], "asgi": ["rgun", "Granian", "Uvicorn", "Gunicorn"]}


class Workload:
    """`app`: MODULE:CALLABLE in bench/; `interface`: wsgi or asgi; `extra`: wrk
    arguments; `threads`: per worker (WSGI) or None; `conns`: connection counts, or
    None for --connections; `ws`: WebSocket echo (bench/ws_client.py), not wrk; `tls`:
    over https, every server serving bench/tls.py's certificate; `http2`: h2 by ALPN
    under h2load (bench/h2load.py), not wrk."""

    def __init__(self, app, interface="wsgi", extra=(), threads=None, conns=None, ws=False, tls=False,
                 http2=False):
        self.app, self.interface, self.extra = app, interface, list(extra)
        self.threads, self.conns, self.ws, self.tls, self.http2 = threads, conns, ws, tls or http2, http2
        self.scheme = "https" if self.tls else "http"


WORKLOADS = {
    "hello": Workload("apps:hello"),
    "flask_json": Workload("flask_apps:flask_json"),
    "64k": Workload("apps:k64"),
    "post_1m": Workload("apps:post_1m", extra=["-s", os.path.join(BENCH, "post_1m.lua")]),
    "sleep10ms": Workload("apps:sleep10ms", threads=4),
    "asgi_hello": Workload("asgi_apps:hello", "asgi"),
    "fastapi_json": Workload("fastapi_apps:fastapi_json", "asgi"),
    # 512 connections: the ideal is 512 / 10 ms = 51,200 req/s, capped by what the
    # client can send (measured beside it: rgun's WSGI hello, the cheapest server
    # answer there is, at 512 connections).
    "asgi_sleep10ms": Workload("asgi_apps:sleep10ms", "asgi", conns=[512]),
    "ws_echo": Workload("asgi_apps:ws_echo", "asgi", conns=[64], ws=True),
    "tls_hello": Workload("apps:hello", tls=True),
    # `Connection: close`: every request is a new TCP connection and a full TLS
    # handshake (wrk does not resume sessions), so req/s is new TLS connections/s.
    "tls_handshakes": Workload("apps:hello", extra=["-H", "Connection: close"], tls=True),
    # 64 connections x 100 streams each (h2load -m 100), over TLS with ALPN h2.
    "h2_hello": Workload("apps:hello", conns=[64], http2=True),
}
QUICK_WORKLOADS = ["hello", "post_1m", "sleep10ms", "asgi_hello", "asgi_sleep10ms", "ws_echo", "tls_hello"]
# rgun+obs (--observability) runs where issue 15 measures it.
OBS_WORKLOADS = {"hello", "flask_json"}
# rgun@base (--baseline: another rgun build, e.g. an older commit's) runs the workloads
# over plain HTTP/1 (WSGI and ASGI, not TLS or HTTP/2); it sits beside rgun in the same
# rounds, so the two builds' ratios to the peers come from one run on one machine.
BASE = "rgun@base"


def servers_for(wl):
    """The servers that run workload `wl`, in the order they run within a round."""
    w = WORKLOADS[wl]
    return [s for s in SERVERS[w.interface]
            if (s != "rgun+obs" or wl in OBS_WORKLOADS) and (s != BASE or not w.tls)]
