"""A burst of load on an idle server: fixed worker counts against autoscaling.

The scenario (one run of each server): idle IDLE_BEFORE s, then CLIENTS keep-alive
clients sending back to back to `apps:sleep20ms` (20 ms waiting on I/O in a sync
worker) for BURST s, then idle IDLE_AFTER s. For each server it reports the p99
latency of the responses completed during the burst's last 20 s (the size reached,
not the climb to it), the worker-seconds over the whole scenario (worker processes
sampled every 100 ms: what the pod pays for), the most workers seen, and errors.

    python3 bench/burst.py                     # .venv's rgun and gunicorn
    python3 bench/burst.py --floor 1 --ceiling 6 --idle 5

Servers: rgun fixed at the floor, rgun fixed at the ceiling, rgun autoscaled between
them (--workers-min/--workers-max, --workers-idle IDLE), Gunicorn fixed at the
ceiling. Not a timed assertion anywhere: a table for BENCHMARKS.md.
"""

import argparse
import http.client
import os
import signal
import subprocess
import sys
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "bench"))
from callgrind import free_port, wait_listening  # noqa: E402

CLIENTS = 32
IDLE_BEFORE, BURST, IDLE_AFTER = 10.0, 30.0, 30.0
MEASURED = 20.0  # the burst's last seconds whose latencies count


def workers_of(master):
    """Worker processes: the master's children, not rgun's hook host."""
    try:
        with open(f"/proc/{master}/task/{master}/children") as f:
            kids = f.read().split()
    except OSError:
        return 0
    n = 0
    for pid in kids:
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if f.read().startswith(b"rgun: hooks"):
                    continue
        except OSError:
            continue
        n += 1
    return n


def client(port, until, out, errors):
    """Back-to-back keep-alive requests until `until`; (completed_at, latency) each."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    while time.monotonic() < until:
        t0 = time.monotonic()
        try:
            conn.request("GET", "/")
            r = conn.getresponse()
            r.read()
            if r.status != 200:
                errors.append(r.status)
            out.append((time.monotonic(), time.monotonic() - t0))
            if r.getheader("connection", "").lower() == "close":
                conn.close()
        except (OSError, http.client.HTTPException) as e:
            errors.append(repr(e))
            conn.close()
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    conn.close()


def run(name, argv, port):
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_listening(port, proc)
        samples = []  # (time, worker processes)
        start = time.monotonic()
        end = start + IDLE_BEFORE + BURST + IDLE_AFTER
        burst_start = start + IDLE_BEFORE
        burst_end = burst_start + BURST
        done, errors, threads = [], [], []
        while (now := time.monotonic()) < end:
            if not threads and now >= burst_start:
                for _ in range(CLIENTS):
                    t = threading.Thread(target=client, args=(port, burst_end, done, errors))
                    t.start()
                    threads.append(t)
            samples.append((now, workers_of(proc.pid)))
            time.sleep(0.1)
        for t in threads:
            t.join()
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
    worker_s = sum(n * (b[0] - a[0]) for (a, b) in zip(samples, samples[1:]) for n in [a[1]])
    late = sorted(lat for at, lat in done if at >= burst_end - MEASURED)
    p99 = late[min(len(late) - 1, int(len(late) * 0.99))] if late else float("nan")
    return {
        "name": name, "p99_ms": p99 * 1000, "worker_s": worker_s,
        "most": max(n for _, n in samples), "requests": len(done), "errors": len(errors),
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rgun", default=os.environ.get("RGUN") or os.path.join(ROOT, ".venv", "bin", "rgun"))
    ap.add_argument("--gunicorn", default=os.path.join(ROOT, ".venv", "bin", "gunicorn"))
    ap.add_argument("--floor", type=int, default=1)
    ap.add_argument("--ceiling", type=int, default=6)
    ap.add_argument("--idle", type=int, default=5, help="rgun --workers-idle for the autoscaled run")
    ap.add_argument("--only", help="comma-separated subset of: floor,ceiling,auto,gunicorn")
    args = ap.parse_args()
    app = ["--pythonpath", os.path.join(ROOT, "bench"), "apps:sleep20ms"]
    common = ["--no-control-socket", "--keep-alive", "30"]
    variants = {
        "floor": lambda p: (f"rgun -w {args.floor}", [args.rgun, "-w", str(args.floor), "-b", f"127.0.0.1:{p}", *common, *app]),
        "ceiling": lambda p: (f"rgun -w {args.ceiling}", [args.rgun, "-w", str(args.ceiling), "-b", f"127.0.0.1:{p}", *common, *app]),
        "auto": lambda p: (f"rgun {args.floor}..{args.ceiling} auto", [
            args.rgun, "--workers-min", str(args.floor), "--workers-max", str(args.ceiling),
            "--workers-idle", str(args.idle), "-b", f"127.0.0.1:{p}", *common, *app]),
        "gunicorn": lambda p: (f"gunicorn -w {args.ceiling}", [
            args.gunicorn, "-w", str(args.ceiling), "-b", f"127.0.0.1:{p}", "--keep-alive", "30", *app]),
    }
    chosen = args.only.split(",") if args.only else list(variants)
    results = []
    for key in chosen:
        port = free_port()
        name, argv = variants[key](port)
        print(f"running {name} ({IDLE_BEFORE:.0f} s idle, {BURST:.0f} s burst, {IDLE_AFTER:.0f} s idle)...", flush=True)
        results.append(run(name, argv, port))
    ceiling = next((r for r in results if r["name"] == f"rgun -w {args.ceiling}"), None)
    print(f"\n{'server':<22} {'p99 last 20 s':>14} {'worker-s':>9} {'vs ceiling':>10} {'most':>5} {'requests':>9} {'errors':>6}")
    for r in results:
        ratio = f"{r['worker_s'] / ceiling['worker_s']:.2f}x" if ceiling else "-"
        print(f"{r['name']:<22} {r['p99_ms']:>11.0f} ms {r['worker_s']:>9.0f} {ratio:>10} {r['most']:>5} {r['requests']:>9} {r['errors']:>6}")


if __name__ == "__main__":
    main()
