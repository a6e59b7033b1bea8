"""HTTP/2 for bench.py: h2load (Debian's nghttp2-client) as the load, the flags that make
each server speak HTTP/2 over TLS (ALPN h2, the same certificate as the tls_* workloads),
and a check that a server really answered over h2 before it is measured.

h2load opens CONNECTIONS connections and keeps STREAMS requests in flight on each, so a
run measures a server's streams multiplexed on few connections, not its accept path.
It reports no latency percentiles (only min/max/mean), so p50/p99 are n/a.
"""

import re
import subprocess

# Requests in flight per connection (h2load -m), the "100 streams per connection".
STREAMS = 100


def server_args(server):
    """What makes `server` offer h2 by ALPN beside its TLS flags (and HTTP/1.1, which
    bench.py's readiness probe speaks). Gunicorn's sync worker cannot speak HTTP/2: its
    gthread worker can."""
    if server == "Granian":
        return ["--http", "auto"]
    if server == "Gunicorn":
        return ["--http-protocols", "h2,h1", "-k", "gthread", "--threads", "4"]
    return ["--http-protocols", "h2,h1"]


def run(port, conns, duration=None, requests=None):
    """h2load's report for `conns` connections x STREAMS streams, for `duration` seconds
    (or `requests` requests), over https with ALPN h2."""
    cmd = ["h2load", f"-c{conns}", f"-m{STREAMS}", f"-t{min(2, conns)}"]
    cmd += [f"-D{duration}"] if duration else [f"-n{requests}"]
    cmd.append(f"https://127.0.0.1:{port}/")
    # A server that stops answering must not hang the run.
    limit = (duration or 10) + 30
    return subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=limit).stdout


def parse(out):
    """{requests, rps, p50, p99, errors} from h2load's report."""
    rps = re.search(r"finished in [\d.]+m?s, ([\d.]+) req/s", out)
    req = re.search(r"requests: \d+ total, \d+ started, (\d+) done, (\d+) succeeded, (\d+) failed, "
                    r"(\d+) errored, (\d+) timeout", out)
    codes = re.search(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", out)
    if not rps or not req or not codes:
        raise ValueError(f"h2load's report not understood: {out[-400:]!r}")
    done, succeeded, failed, errored, timeout = map(int, req.groups())
    ok = int(codes.group(1)) + int(codes.group(2))
    return {"requests": succeeded, "rps": float(rps.group(1)), "p50": float("nan"), "p99": float("nan"),
            "errors": failed + errored + timeout + (done - ok if done > ok else 0)}


def check(port):
    """Ten requests that must be answered 2xx over a negotiated h2."""
    out = run(port, 1, requests=10)
    r = parse(out)
    if "Application protocol: h2" not in out or r["requests"] != 10 or r["errors"]:
        raise RuntimeError(f"no HTTP/2 answer: {out[-400:]!r}")
