"""A trivial dirty call's latency and throughput under rgun and Gunicorn 27, in one run.

Starts each server with the same flags (`--dirty-app dirty_bench:Echo --dirty-workers 2`),
finds its dirty socket in its log, and calls `Echo.ping` through Gunicorn's own
`gunicorn.dirty` client — the client every application uses — straight on that socket:
first one caller in sequence (latency: median and p99), then PROCS callers in parallel
processes for SECONDS (throughput: calls per second). The HTTP side is not measured.

    .venv/bin/python bench/dirty.py                  # rgun and gunicorn from ./.venv
    .venv/bin/python bench/dirty.py --procs 8 --seconds 5
"""

import argparse
import multiprocessing
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.dirname(sys.executable)
APP = '''
from gunicorn.dirty import DirtyApp

class Echo(DirtyApp):
    def ping(self, x):
        return x

def app(environ, start_response):
    start_response("200 OK", [])
    return [b""]
'''
# Where each server logs its dirty socket.
SOCKET_LINE = {
    "rgun": re.compile(r"Dirty arbiter socket: (\S+)"),
    "gunicorn": re.compile(r"Spawned dirty arbiter \(pid: \d+\) at (\S+)"),
}


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(server, workdir):
    log = os.path.join(workdir, server + ".log")
    args = [os.path.join(BIN, server), "dirty_bench:app", "-w", "1", "-b", "127.0.0.1:%d" % free_port(),
            "--pythonpath", workdir, "--dirty-app", "dirty_bench:Echo", "--dirty-workers", "2",
            "--error-logfile", log]
    args += ["--no-control-socket"]
    if server == "gunicorn":
        # Gunicorn keeps its dirty arbiter's pid in /tmp/gunicorn-dirty-NAME.pid and,
        # starting, kills the "orphan" it names: a name of our own spares others.
        args += ["--name", "dirty-bench-%d" % os.getpid()]
    proc = subprocess.Popen(args, cwd=workdir, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 30
    while time.time() < deadline:
        text = open(log).read() if os.path.exists(log) else ""
        found = SOCKET_LINE[server].search(text)
        if found and ping(found.group(1)):
            return proc, found.group(1)
        time.sleep(0.1)
    proc.kill()
    raise SystemExit("%s did not start its dirty pool:\n%s" % (server, text))


def ping(path):
    from gunicorn.dirty.client import DirtyClient
    try:
        with DirtyClient(path, timeout=5) as c:
            return c.execute("dirty_bench:Echo", "ping", 1) == 1
    except Exception:
        return False


def latency(path, calls):
    from gunicorn.dirty.client import DirtyClient
    c = DirtyClient(path, timeout=10)
    for _ in range(200):  # warm up: connections, both workers
        c.execute("dirty_bench:Echo", "ping", 1)
    times = []
    for i in range(calls):
        t = time.perf_counter()
        c.execute("dirty_bench:Echo", "ping", i)
        times.append(time.perf_counter() - t)
    c.close()
    times.sort()
    return statistics.median(times), times[int(len(times) * 0.99)]


def _caller(path, seconds, out):
    from gunicorn.dirty.client import DirtyClient
    c = DirtyClient(path, timeout=10)
    n = 0
    end = time.time() + seconds
    while time.time() < end:
        c.execute("dirty_bench:Echo", "ping", n)
        n += 1
    out.put(n)


def throughput(path, procs, seconds):
    out = multiprocessing.Queue()
    ps = [multiprocessing.Process(target=_caller, args=(path, seconds, out)) for _ in range(procs)]
    for p in ps:
        p.start()
    total = sum(out.get() for _ in ps)
    for p in ps:
        p.join()
    return total / seconds


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--calls", type=int, default=3000, help="sequential calls for latency")
    ap.add_argument("--procs", type=int, default=4, help="parallel callers for throughput")
    ap.add_argument("--seconds", type=float, default=3.0)
    opts = ap.parse_args()
    workdir = tempfile.mkdtemp(prefix="dirty-bench-")
    with open(os.path.join(workdir, "dirty_bench.py"), "w") as f:
        f.write(APP)
    print("%-9s %12s %12s %14s" % ("server", "p50 (us)", "p99 (us)", "calls/s (%d)" % opts.procs))
    try:
        for server in ("rgun", "gunicorn"):
            proc, path = start(server, workdir)
            try:
                p50, p99 = latency(path, opts.calls)
                rate = throughput(path, opts.procs, opts.seconds)
            finally:
                proc.terminate()
                proc.wait(timeout=30)
            print("%-9s %12.0f %12.0f %14.0f" % (server, p50 * 1e6, p99 * 1e6, rate))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
