"""ASGI benchmark: rgun -k asgi vs Granian --interface asgi vs Uvicorn (httptools,
uvloop), 2 workers each, on bench/asgi_apps.py, measured as bench.py measures (wrk
req/s and latency, server CPU per request, peak RSS; WebSocket echo with
bench/ws_client.py: messages/s and server CPU per message). Prints a table; writes nothing.

    bench/.venv/bin/python bench/asgi.py [--duration 5] [--rounds 1] [--connections 64]
"""

import argparse
import os
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench  # noqa: E402

SERVERS = ["rgun", "Granian", "Uvicorn"]
WORKLOADS = {"hello": ("asgi_apps:hello", 64), "sleep10ms": ("asgi_apps:sleep10ms", 512),
             "fastapi_json": ("fastapi_apps:fastapi_json", 64), "ws_echo": ("asgi_apps:ws_echo", 64)}


def measure_ws(proc, port, conns, duration):
    """Like bench.measure, with bench/ws_client.py as the load: messages/s and server
    CPU per message (no latency figures)."""
    before = bench.cpu_times(proc.pid)
    out = bench.subprocess.run([sys.executable, os.path.join(bench.BENCH, "ws_client.py"), str(port),
                                str(conns), str(duration)], capture_output=True, text=True, check=True).stdout
    after = bench.cpu_times(proc.pid)
    messages = int(out.strip())
    cpu = sum(v - before.get(pid, 0.0) for pid, v in after.items())
    return {"requests": messages, "rps": messages / duration, "p99": float("nan"),
            "cpu_us": cpu / messages * 1e6 if messages else float("nan"), "rss": bench.rss_mib(proc.pid),
            "errors": 0}


def server_cmd(server, app, port, threads):
    if server == "rgun":
        return [bench.RGUN, "-k", "asgi", "-w", str(bench.WORKERS), "-b", f"127.0.0.1:{port}",
                "--pythonpath", bench.BENCH, "--no-control-socket", "--worker-connections", "2000", app]
    if server == "Granian":
        return [f"{bench.VENV}/bin/granian", "--interface", "asgi", "--workers", str(bench.WORKERS),
                "--host", "127.0.0.1", "--port", str(port), "--working-dir", bench.BENCH, app]
    return [f"{bench.VENV}/bin/uvicorn", "--workers", str(bench.WORKERS), "--host", "127.0.0.1",
            "--port", str(port), "--app-dir", bench.BENCH, "--http", "httptools", "--loop", "uvloop",
            "--no-access-log", "--lifespan", "off", app]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--duration", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--workloads", default=",".join(WORKLOADS))
    args = ap.parse_args()
    bench.server_cmd = server_cmd
    logdir = bench.tempfile.mkdtemp(prefix="rgun-asgi-bench-")
    print(f"load at start: {bench.loadavg()}; server logs: {logdir}", flush=True)
    rows = []
    for wl in args.workloads.split(","):
        app, conns = WORKLOADS[wl]
        results = {s: [] for s in SERVERS}
        for rnd in range(args.rounds):
            for server in SERVERS:
                proc, port = bench.start(server, app, None, logdir)
                try:
                    if wl == "ws_echo":
                        r = measure_ws(proc, port, conns, args.duration)
                    else:
                        bench.wrk(port, 64, 1, [])
                        r = bench.measure(proc, port, conns, args.duration, [])
                    results[server].append(r)
                    print(f"[{wl} r{rnd + 1}] {server:8} c={conns:<3} {r['rps']:9.0f} req/s  p99 {r['p99']:7.2f} ms  "
                          f"cpu {r['cpu_us']:6.1f} us/req  rss {r['rss']:6.1f} MiB  errors {r['errors']}", flush=True)
                finally:
                    bench.stop(proc)
        med = {s: {k: statistics.median(r[k] for r in rs) for k in ("rps", "p99", "cpu_us", "rss")}
               for s, rs in results.items() if rs}
        for s, m in med.items():
            rows.append(f"| {wl} | {conns} | {s} | {m['rps']:.0f} | {m['p99']:.2f} | {m['cpu_us']:.1f} | {m['rss']:.1f} |")
    print(f"\nload at end: {bench.loadavg()}\n")
    print("| workload | conns | server | req/s | p99 ms | CPU µs/req | peak RSS MiB |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
