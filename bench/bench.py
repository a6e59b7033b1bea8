"""Benchmark orchestrator: rgun vs its peers on the same apps, 2 workers each.
WSGI workloads (bench/apps.py, bench/flask_apps.py): rgun, Granian --interface wsgi,
Gunicorn. ASGI workloads (bench/asgi_apps.py, bench/fastapi_apps.py): rgun -k asgi,
Granian --interface asgi, Uvicorn (httptools, uvloop), Gunicorn -k asgi.

Run through `bench/run`, which sets up wrk, the pinned venv and the release build.
For each workload and round it starts each server (2 workers, loopback, free port),
waits until it answers, warms up, then runs `wrk -t2 --latency` at 1 and 64
connections (the 10 ms sleep workloads: their own counts; WebSocket echo:
bench/ws_client.py). Servers are interleaved within a round (rgun, Granian, Gunicorn,
rgun, ...; with --baseline or --observability, rgun and the build it is compared with
swap places every other round) and the MEDIAN over rounds is reported. Results go to stdout and to
BENCHMARKS.md.

Measurements:
  req/s, p50, p99   from wrk (--latency distribution)
  CPU us/req        utime+stime of the live server process tree (master + all
                    descendants, /proc/<pid>/stat) sampled just before and after wrk;
                    processes that exit during the run are not counted
  peak RSS MiB      max over the run of the sum of VmRSS of the tree, sampled every
                    100 ms (shared pages are counted once per process)
  peak PSS MiB      the same for Pss (/proc/<pid>/smaps_rollup): a page shared by n
                    processes counts 1/n in each, so the tree's sum counts it once
  errors            wrk non-2xx/3xx responses + socket errors (summed over rounds)
"""

import argparse
import datetime
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import http.client

import h2load
import tls
from report import loadavg, report, versions
from workloads import BASE, BENCH, QUICK_WORKLOADS, ROOT, SERVERS, WORKERS, WORKLOADS, servers_for

# BENCH_VENV: another venv with the same pins (e.g. of another CPython).
VENV = os.environ.get("BENCH_VENV", os.path.join(BENCH, ".venv"))
RGUN = os.path.join(VENV, "bin", "rgun")  # pip-installed by bench/run
BASELINE = []  # --baseline: the rgun executable run as rgun@base
CLK = os.sysconf("SC_CLK_TCK")

# (certfile, keyfile) for the tls_* workloads, made once per run.
CERT = []


# `--observability`: a statsd sink (a UDP socket a thread drains, as an agent would) and
# a scraper that reads /metrics once a second, for the "rgun+obs" variant.
OBS = {"statsd_port": None, "metrics_port": None}


def statsd_sink():
    """Binds a UDP socket for rgun+obs's statsd packets and drains it in a thread."""
    sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sink.bind(("127.0.0.1", 0))
    OBS["statsd_port"] = sink.getsockname()[1]
    OBS["packets"] = 0

    def drain():
        while True:
            sink.recv(65536)
            OBS["packets"] += 1

    threading.Thread(target=drain, daemon=True).start()


def scrape_while(stop_event):
    """GET /metrics once a second until `stop_event` (Prometheus does every 15 s)."""
    while not stop_event.wait(1.0):
        try:
            c = http.client.HTTPConnection("127.0.0.1", OBS["metrics_port"], timeout=2)
            c.request("GET", "/metrics")
            c.getresponse().read()
            c.close()
        except OSError:
            pass


def server_cmd(server, wl, port):
    """The command line that starts `server` on workload `wl` (cwd = repo root)."""
    cmd = plain_server_cmd(server, wl, port)
    if wl.tls:
        cmd[-1:-1] = tls.server_args(server, *CERT)
    if wl.http2:
        cmd[-1:-1] = h2load.server_args(server)
    return cmd


def plain_server_cmd(server, wl, port):
    app, threads = wl.app, wl.threads
    if wl.interface == "asgi":
        if server in ("rgun", BASE):
            return [BASELINE[0] if server == BASE else RGUN, "-k", "asgi", "-w", str(WORKERS), "-b", f"127.0.0.1:{port}", "--pythonpath", BENCH,
                    "--no-control-socket", "--worker-connections", "2000", app]
        if server == "Gunicorn":
            return [f"{VENV}/bin/gunicorn", "-k", "asgi", "-w", str(WORKERS), "-b", f"127.0.0.1:{port}",
                    "--chdir", BENCH, "--no-control-socket", "--worker-connections", "2000", app]
        if server == "Granian":
            return [f"{VENV}/bin/granian", "--interface", "asgi", "--workers", str(WORKERS), "--host", "127.0.0.1",
                    "--port", str(port), "--working-dir", BENCH, app]
        return [f"{VENV}/bin/uvicorn", "--workers", str(WORKERS), "--host", "127.0.0.1", "--port", str(port),
                "--app-dir", BENCH, "--http", "httptools", "--loop", "uvloop", "--no-access-log",
                "--lifespan", "off", app]
    if server.startswith("rgun"):
        cmd = [BASELINE[0] if server == BASE else RGUN, "-w", str(WORKERS), "-b", f"127.0.0.1:{port}", "--pythonpath", BENCH, "--no-control-socket"]
        if server == "rgun+obs":
            OBS["metrics_port"] = free_port()
            cmd += ["--metrics-bind", f"127.0.0.1:{OBS['metrics_port']}",
                    "--statsd-host", f"127.0.0.1:{OBS['statsd_port']}"]
        cmd.append(app)
        return cmd[:-1] + (["--threads", str(threads)] if threads else []) + cmd[-1:]
    if server == "Gunicorn":
        cmd = [f"{VENV}/bin/gunicorn", "-w", str(WORKERS), "-b", f"127.0.0.1:{port}", "--chdir", BENCH, "--no-control-socket"]
        return cmd + (["--threads", str(threads)] if threads else []) + [app]
    cmd = [f"{VENV}/bin/granian", "--interface", "wsgi", "--workers", str(WORKERS), "--host", "127.0.0.1",
           "--port", str(port), "--working-dir", BENCH]
    return cmd + (["--blocking-threads", str(threads)] if threads else []) + [app]


# ---------------------------------------------------------------- /proc sampling

def tree(root):
    """Pids of `root` and all its live descendants."""
    children = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
                children.setdefault(ppid, []).append(int(d))
            except (OSError, IndexError, ValueError):
                pass
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(children.get(pid, []))
    return out


def cpu_times(root):
    """{pid: utime+stime in seconds} over the live tree."""
    res = {}
    for pid in tree(root):
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            res[pid] = (int(fields[11]) + int(fields[12])) / CLK  # fields 14 and 15 of stat
        except (OSError, IndexError, ValueError):
            pass
    return res


def rss_mib(root):
    """(RSS, PSS) of `root`'s tree in MiB: VmRSS and Pss summed over its processes."""
    rss = pss = 0
    for pid in tree(root):
        try:
            with open(f"/proc/{pid}/status") as f:
                rss += next((int(l.split()[1]) for l in f if l.startswith("VmRSS:")), 0)
            with open(f"/proc/{pid}/smaps_rollup") as f:
                pss += next((int(l.split()[1]) for l in f if l.startswith("Pss:")), 0)
        except OSError:
            pass
    return rss / 1024, pss / 1024


# ---------------------------------------------------------------- server lifecycle

def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(server, wl, logdir):
    port = free_port()
    env = dict(os.environ, VIRTUAL_ENV=VENV)
    env["PATH"] = f"{VENV}/bin:" + env.get("PATH", "")
    log = open(os.path.join(logdir, f"{server}-{wl.app}.log"), "ab")
    proc = subprocess.Popen(server_cmd(server, wl, port), cwd=ROOT, env=env,
                            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        deadline = time.time() + 30
        while time.time() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"{server} exited with {proc.returncode}; see {log.name}")
            try:
                c = connection(port, 2, wl.tls)
                c.request("GET", "/")
                status = c.getresponse().status
                c.close()
                if status == 200:
                    return proc, port
            except OSError:
                time.sleep(0.1)
        raise RuntimeError(f"{server} did not answer within 30 s; see {log.name}")
    except BaseException:
        stop(proc)
        raise


def stop(proc, grace=10):
    """SIGTERM the master, SIGKILL it (and any leftover descendants) after `grace` s."""
    pids = tree(proc.pid)
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    for pid in pids[1:]:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def run_order(wl, rnd):
    """The servers of `wl` in the order they run in round `rnd`: rgun and the build it is
    compared with (rgun@base or rgun+obs, second in `servers_for`) swap places every
    other round, so that neither always runs right after the same server (the previous
    round's last, Gunicorn, is the slowest to let go of its CPU and sockets)."""
    order = servers_for(wl)
    if rnd % 2 and len(order) > 1 and order[1] in (BASE, "rgun+obs"):
        order[0], order[1] = order[1], order[0]
    return order


def connection(port, timeout, over_tls):
    if over_tls:
        return tls.connection(port, timeout)
    return http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)


def check(port, wl):
    """One real request per workload, so a server that answers wrongly is caught, not benchmarked."""
    if WORKLOADS[wl].http2:
        return h2load.check(port)
    c = connection(port, 10, WORKLOADS[wl].tls)
    body = b"a" * (1 << 20) if wl == "post_1m" else None
    c.request("POST" if body else "GET", "/", body=body)
    resp = c.getresponse()
    data = resp.read()
    c.close()
    want = {"64k": lambda d: len(d) == 65536, "post_1m": lambda d: d.startswith(b"1048576 ")}.get(wl, bool)
    if resp.status != 200 or not want(data):
        raise RuntimeError(f"bad answer for {wl}: {resp.status} {data[:80]!r}")


# ---------------------------------------------------------------- wrk

UNIT = {"us": 1e-3, "ms": 1.0, "s": 1e3}


def parse_wrk(out):
    def lat(pct):
        m = re.search(rf"^\s*{pct}%\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
        return float(m.group(1)) * UNIT[m.group(2)] if m else float("nan")

    m = re.search(r"(\d+) requests in", out)
    non2xx = re.search(r"Non-2xx or 3xx responses:\s*(\d+)", out)
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    return {
        "requests": int(m.group(1)) if m else 0,
        "rps": float(re.search(r"Requests/sec:\s*([\d.]+)", out).group(1)),
        "p50": lat(50), "p99": lat(99),
        "errors": (int(non2xx.group(1)) if non2xx else 0) + (sum(map(int, sock.groups())) if sock else 0),
    }


def wrk(port, conns, duration, extra, scheme="http"):
    cmd = ["wrk", f"-t{min(2, conns)}", f"-c{conns}", f"-d{duration}s", "--timeout", "5s", "--latency", *extra,
           f"{scheme}://127.0.0.1:{port}/"]
    return subprocess.run(cmd, capture_output=True, text=True, check=True).stdout


def run_load(port, conns, duration, w):
    """`w`'s load at `conns` connections for `duration` s, parsed: wrk's, or h2load's for
    HTTP/2."""
    if w.http2:
        return h2load.parse(h2load.run(port, conns, duration))
    return parse_wrk(wrk(port, conns, duration, w.extra, w.scheme))


def measure(proc, port, conns, duration, w, scrape=False):
    """`w`'s load at `conns` connections (or, for `w.ws`, bench/ws_client.py's WebSocket
    echo: messages count as requests, no latency figures)."""
    peak, done = [0.0, 0.0], threading.Event()

    def sampler():
        while not done.is_set():
            peak[:] = map(max, peak, rss_mib(proc.pid))
            done.wait(0.1)

    t = threading.Thread(target=sampler)
    scraper = threading.Thread(target=scrape_while, args=(done,)) if scrape else None
    before = cpu_times(proc.pid)
    t.start()
    if scraper:
        scraper.start()
    try:
        if w.ws:
            out = subprocess.run([sys.executable, os.path.join(BENCH, "ws_client.py"), str(port), str(conns),
                                  str(duration)], capture_output=True, text=True, check=True).stdout
        else:
            r = run_load(port, conns, duration, w)
    finally:
        done.set()
        t.join()
        if scraper:
            scraper.join()
    after = cpu_times(proc.pid)
    if w.ws:
        messages = int(out.strip())
        r = {"requests": messages, "rps": messages / duration, "p50": float("nan"), "p99": float("nan"), "errors": 0}
    cpu = sum(v - before.get(pid, 0.0) for pid, v in after.items())
    r["cpu_us"] = cpu / r["requests"] * 1e6 if r["requests"] else float("nan")
    r["rss"], r["pss"] = peak
    return r


def reload_time(logdir):
    """rgun's reload of a 2-worker Flask app against the app's import time (target:
    within import time + 200 ms)."""
    probe = subprocess.run([f"{VENV}/bin/python", "-c",
                            "import sys, time; sys.path.insert(0, %r); t = time.perf_counter(); "
                            "import flask_apps; print(time.perf_counter() - t)" % BENCH],
                           capture_output=True, text=True, check=True)
    import_ms = float(probe.stdout.strip()) * 1000
    ctl = os.path.join(logdir, "rgun.ctl")
    port = free_port()
    env = dict(os.environ, VIRTUAL_ENV=VENV)
    proc = subprocess.Popen([RGUN, "-w", str(WORKERS), "-b", f"127.0.0.1:{port}", "--pythonpath", BENCH,
                             "--control-socket", ctl, "flask_apps:flask_json"], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=open(os.path.join(logdir, "reload.log"), "w"))
    durations = []
    try:
        deadline = time.time() + 30
        while True:
            try:
                c = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
                c.request("GET", "/")
                if c.getresponse().status == 200:
                    break
            except OSError:
                if time.time() > deadline or proc.poll() is not None:
                    raise RuntimeError("rgun did not start for the reload measurement")
                time.sleep(0.1)
        # A reload is refused (busy) until every worker of the first generation is up.
        while control(ctl, {"id": 0, "cmd": "status"})["result"]["master"]["state"] != "running":
            if time.time() > deadline:
                raise RuntimeError("rgun did not reach the running state for the reload measurement")
            time.sleep(0.1)
        for _ in range(5):
            answer = control(ctl, {"id": 1, "cmd": "reload", "wait": True})
            if not answer.get("ok"):
                raise RuntimeError(f"reload failed: {answer}")
            durations.append(answer["result"]["duration_ms"])
    finally:
        stop(proc)
    best = min(durations)
    verdict = "met" if best <= import_ms + 200 else "NOT met"
    return (f"Reload of a 2-worker Flask app (`rgunctl reload`, 5 times): {', '.join(map(str, durations))} ms; "
            f"the app's import takes {import_ms:.0f} ms in a fresh interpreter; target import + 200 ms: {verdict}.")


def control(path, request):
    """One request on rgun's control socket."""
    import json
    import socket
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(120)
        s.connect(path)
        s.sendall((json.dumps(request) + "\n").encode())
        data = b""
        while not data.endswith(b"\n"):
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    return json.loads(data)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="smoke run: 2 s, 1 round, fewer workloads")
    ap.add_argument("--duration", type=int, help="seconds per load run (default 10, quick 2)")
    ap.add_argument("--rounds", type=int, help="interleaved rounds (default 2, quick 1)")
    ap.add_argument("--workloads", help="comma-separated subset of: " + ",".join(WORKLOADS))
    ap.add_argument("--connections", default="1,64", help="comma-separated wrk connection counts (workloads "
                    "with their own, asgi_sleep10ms and ws_echo, keep them)")
    ap.add_argument("--observability", action="store_true",
                    help="also run rgun+obs: rgun with --metrics-bind (scraped every second) and --statsd-host")
    ap.add_argument("--baseline", metavar="RGUN",
                    help="also run this rgun executable (another build, e.g. an older commit's) as rgun@base "
                         "on the workloads over plain HTTP/1 (WSGI and ASGI), beside rgun in the same rounds")
    ap.add_argument("--out", default=os.path.join(ROOT, "BENCHMARKS.md"), help="markdown output ('' for none)")
    args = ap.parse_args()
    if args.observability:
        SERVERS["wsgi"].insert(1, "rgun+obs")
        statsd_sink()
    if args.baseline:
        if not os.access(args.baseline, os.X_OK):
            sys.exit(f"--baseline {args.baseline}: not an executable")
        BASELINE.append(os.path.abspath(args.baseline))
        SERVERS["wsgi"].insert(1, BASE)
        SERVERS["asgi"].insert(1, BASE)
    args.duration = args.duration or (2 if args.quick else 10)
    args.rounds = args.rounds or (1 if args.quick else 2)
    wls = args.workloads.split(",") if args.workloads else (QUICK_WORKLOADS if args.quick else list(WORKLOADS))
    for wl in wls:
        if wl not in WORKLOADS:
            sys.exit(f"unknown workload {wl!r}; known: {', '.join(WORKLOADS)}")
    conns = [int(c) for c in args.connections.split(",")]
    info = {"date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M"), **versions(*BASELINE),
            "load": f"at start: {loadavg()}"}
    if float(loadavg().split()[0]) > 0.5:
        print(f"WARNING: machine not idle (load {loadavg()}); other work skews the results", flush=True)
    logdir = tempfile.mkdtemp(prefix="rgun-bench-")
    print(f"{info['machine']}\n{info['versions']}\nserver logs: {logdir}", flush=True)

    if any(WORKLOADS[wl].tls for wl in wls):
        CERT.extend(tls.make_certificate(logdir))
    results = {(wl, c): {s: [] for s in servers_for(wl)}
               for wl in wls for c in (WORKLOADS[wl].conns or conns)}
    # asgi_sleep10ms's ideal is capped by what the client can send at its connection
    # count: rgun's WSGI hello measured at that count, in the same round.
    caps = {wl: [] for wl in wls}
    for wl in wls:
        w = WORKLOADS[wl]
        for rnd in range(args.rounds):
            runs = [(server, w) for server in run_order(wl, rnd)]
            if wl == "asgi_sleep10ms":
                runs.append(("cap", WORKLOADS["hello"]))
            for server, load in runs:
                name = "rgun" if server == "cap" else server
                try:
                    proc, port = start(name, load, logdir)
                except RuntimeError as e:
                    print(f"[{wl} r{rnd + 1}] {server}: {e}", flush=True)
                    continue
                try:
                    check(port, wl)
                    run_load(port, 64, 1, w)  # warm-up
                    for c in (w.conns or conns):
                        r = measure(proc, port, c, args.duration, w, scrape=server == "rgun+obs")
                        if server == "cap":
                            caps[wl].append(r["rps"])
                        else:
                            results[(wl, c)][server].append(r)
                        print(f"[{wl} r{rnd + 1}] {server:8} c={c:<3} {r['rps']:9.0f} req/s  p50 {r['p50']:7.2f} ms  "
                              f"p99 {r['p99']:7.2f} ms  cpu {r['cpu_us']:6.0f} us/req  rss {r['rss']:6.1f} pss {r['pss']:6.1f} MiB  "
                              f"errors {r['errors']}", flush=True)
                except subprocess.CalledProcessError as e:
                    print(f"[{wl} r{rnd + 1}] {server}: load failed: {e.stderr.strip()}", flush=True)
                except (RuntimeError, OSError, ValueError, subprocess.TimeoutExpired) as e:
                    print(f"[{wl} r{rnd + 1}] {server}: {e}", flush=True)
                finally:
                    stop(proc)

    info["load"] += f"; at end: {loadavg()}"
    md = report(results, caps, args, info) + "\n\n" + reload_time(logdir)
    print("\n" + md)
    if args.out:
        with open(args.out, "w") as f:
            f.write(f"# Benchmarks\n\nGenerated by `bench/run{' --quick' if args.quick else ''}`; do not edit by hand.\n\n{md}\n")
        print(f"\nwrote {args.out}")


if __name__ == "__main__":
    sys.exit(main())
