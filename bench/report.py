"""The markdown bench/bench.py writes (BENCHMARKS.md): per interface a table of the
servers side by side and one of ratios, the sleep workloads against their ideal, rgun+obs
against rgun, and the issues' targets checked against the run."""

import importlib.metadata
import os
import platform
import statistics
import subprocess

from workloads import BASE, ROOT, SERVERS, WORKERS, WORKLOADS, servers_for


def versions(baseline=None):
    """The machine and every server's version; `baseline`: the rgun@base executable,
    named by the commit of the checkout it was built in."""
    def run(*cmd, cwd=ROOT):
        try:
            return subprocess.run(cmd, capture_output=True, text=True, cwd=cwd).stdout.strip()
        except OSError:
            return "?"

    def rev(cwd):
        dirty = run("git", "status", "--porcelain", "--", "src", "Cargo.toml", cwd=cwd)
        return (run("git", "rev-parse", "--short", "HEAD", cwd=cwd) or "?") + (" (dirty)" if dirty else "")
    base = f", {BASE} {rev(os.path.dirname(baseline))} ({baseline})" if baseline else ""
    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
    wrk_v = subprocess.run(["wrk", "-v"], capture_output=True, text=True).stdout.split("\n")[0].split(" [")[0]
    return {
        "machine": f"{os.cpu_count()} cores (nproc {run('nproc')}), {cpu}, Linux {platform.release()}",
        "versions": f"rgun {rev(ROOT)}{base}, Python {platform.python_version()}, gunicorn {importlib.metadata.version('gunicorn')}, "
                    f"granian {importlib.metadata.version('granian')}, uvicorn {importlib.metadata.version('uvicorn')}, "
                    f"uvloop {importlib.metadata.version('uvloop')}, flask {importlib.metadata.version('flask')}, "
                    f"fastapi {importlib.metadata.version('fastapi')}, {wrk_v}",
    }


def loadavg():
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


def fmt(x, nd=0):
    return "n/a" if x != x else f"{x:,.{nd}f}"


def ratio(a, b):
    return "n/a" if not b or a != a or b != b else f"{a / b:.2f}"


def medians(per):
    return {s: {k: statistics.median(r[k] for r in rs) for k in ("rps", "p50", "p99", "cpu_us", "rss", "pss")}
            | {"errors": sum(r["errors"] for r in rs)} for s, rs in per.items() if rs}


def tables(results, interface):
    """One interface's main table (servers side by side per workload) and its ratios."""
    servers = SERVERS[interface]
    peers = [s for s in servers if not s.startswith("rgun")]
    L = ["| workload | conns | server | req/s | p50 ms | p99 ms | CPU µs/req | peak RSS MiB | peak PSS MiB | errors |",
         "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|"]
    heads = [f"{k} rgun/{o}" for k in ("req/s", "p99", "CPU/req", "RSS", "PSS") for o in peers]
    R = ["| workload | conns | " + " | ".join(heads) + " |", "|---|---:|" + "---:|" * len(heads)]
    for (wl, conns), per in results.items():
        if WORKLOADS[wl].interface != interface:
            continue
        med = medians(per)
        for s in servers_for(wl):
            if s not in med:
                L.append(f"| {wl} | {conns} | {s} | failed | | | | | | |")
                continue
            m = med[s]
            L.append(f"| {wl} | {conns} | {s} | {fmt(m['rps'])} | {fmt(m['p50'], 2)} | {fmt(m['p99'], 2)} "
                     f"| {fmt(m['cpu_us'])} | {fmt(m['rss'], 1)} | {fmt(m['pss'], 1)} | {m['errors']} |")
        g = lambda s, k: med.get(s, {}).get(k, float("nan"))
        for b in ["rgun"] + [BASE] * (BASE in med):
            label = wl if b == "rgun" else f"{wl} ({b})"
            R.append(f"| {label} | {conns} | " + " | ".join(ratio(g(b, k), g(o, k)) for k in ("rps", "p99", "cpu_us", "rss", "pss")
                                                            for o in peers) + " |")
    return L, R


def at_most(a, b, want):
    """Whether a/b <= want (None when either is missing)."""
    return None if a != a or b != b or not b else a / b <= want


def verdict(ok):
    return "n/a" if ok is None else ("met" if ok else "NOT met")


def asgi_targets(results, caps):
    """Issue 14's targets, each checked against this run."""
    def m(wl, conns, server, key):
        per = results.get((wl, conns), {})
        return medians(per).get(server, {}).get(key, float("nan"))

    def at_least(a, b, want):
        return None if a != a or b != b or not b else a / b >= want

    out = []
    if ("asgi_hello", 64) in results:
        rps, cpu = m("asgi_hello", 64, "rgun", "rps"), m("asgi_hello", 64, "rgun", "cpu_us")
        grps, gcpu = m("asgi_hello", 64, "Granian", "rps"), m("asgi_hello", 64, "Granian", "cpu_us")
        out.append(f"- raw ASGI hello @ 64: req/s {ratio(rps, grps)}× Granian (target ≥ 2.0: {verdict(at_least(rps, grps, 2.0))}), "
                   f"CPU/req {ratio(cpu, gcpu)}× (target ≤ 0.5: {verdict(at_most(cpu, gcpu, 0.5))}); "
                   f"p99 {ratio(m('asgi_hello', 64, 'rgun', 'p99'), m('asgi_hello', 64, 'Granian', 'p99'))}× Granian's "
                   f"(target ≤ 1: {verdict(at_most(m('asgi_hello', 64, 'rgun', 'p99'), m('asgi_hello', 64, 'Granian', 'p99'), 1.0))}); "
                   f"RSS {ratio(m('asgi_hello', 64, 'rgun', 'rss'), m('asgi_hello', 64, 'Uvicorn', 'rss'))}× Uvicorn's "
                   f"(target ≤ 0.75: {verdict(at_most(m('asgi_hello', 64, 'rgun', 'rss'), m('asgi_hello', 64, 'Uvicorn', 'rss'), 0.75))})")
    if ("fastapi_json", 64) in results:
        a, b = m("fastapi_json", 64, "rgun", "rps"), m("fastapi_json", 64, "Granian", "rps")
        out.append(f"- FastAPI JSON @ 64: req/s {ratio(a, b)}× Granian (target ≥ 1.3: {verdict(at_least(a, b, 1.3))})")
    for (wl, conns) in results:
        if wl != "asgi_sleep10ms":
            continue
        cap = statistics.median(caps[wl]) if caps.get(wl) else float("nan")
        ideal = min(conns / 0.010, cap) if cap == cap else conns / 0.010
        rps = m(wl, conns, "rgun", "rps")
        out.append(f"- 10 ms sleep @ {conns}: ideal = min({conns} / 10 ms = {conns / 0.010:,.0f}, the client's cap "
                   f"{fmt(cap)} req/s: wrk against rgun's WSGI hello at {conns} connections) = {ideal:,.0f} req/s; achieved/ideal: "
                   + ", ".join(f"{s} {ratio(m(wl, conns, s, 'rps'), ideal)}" for s in SERVERS["asgi"])
                   + f" (target rgun ≥ 0.9: {verdict(at_least(rps, ideal, 0.9))})")
    if ("ws_echo", 64) in results:
        a, b = m("ws_echo", 64, "rgun", "rps"), m("ws_echo", 64, "Granian", "rps")
        out.append(f"- WebSocket echo @ 64: messages/s {ratio(a, b)}× Granian (target ≥ 1.5: {verdict(at_least(a, b, 1.5))})")
    return out


def tls_targets(results):
    """Issue 16's TLS targets, each checked against this run (at 64 connections)."""
    def m(wl, server, key):
        return medians(results.get((wl, 64), {})).get(server, {}).get(key, float("nan"))

    def check(wl, what, want_rps, cpu_target=True):
        rps, grps = m(wl, "rgun", "rps"), m(wl, "Granian", "rps")
        cpu, gcpu = m(wl, "rgun", "cpu_us"), m(wl, "Granian", "cpu_us")
        ok_rps = None if rps != rps or grps != grps or not grps else rps / grps >= want_rps
        ok_cpu = None if cpu != cpu or gcpu != gcpu or not gcpu else cpu / gcpu <= 0.6
        # The "server CPU per request <= 0.6x in both" is for the two hello
        # workloads; a handshake's CPU is mostly ring's X25519 and ECDSA, which both
        # servers compute (bench/callgrind.py --tls --fresh shows it).
        cpu_verdict = f"target ≤ 0.6: {verdict(ok_cpu)}" if cpu_target else "no target: mostly the key exchange and signature, the same ring code in both"
        return (f"- {what} @ 64: {ratio(rps, grps)}× Granian's (target ≥ {want_rps}: {verdict(ok_rps)}), "
                f"CPU/req {ratio(cpu, gcpu)}× ({cpu_verdict})")

    out = []
    if ("tls_hello", 64) in results:
        out.append(check("tls_hello", "TLS hello req/s", 1.5))
    if ("h2_hello", 64) in results:
        out.append(check("h2_hello", "HTTP/2 hello req/s (h2load, 100 streams per connection)", 1.5))
    if ("tls_handshakes", 64) in results:
        out.append(check("tls_handshakes", "new TLS connections/s", 1.0, cpu_target=False))
    return out


def report(results, caps, args, info):
    """Markdown: per interface, one main table (servers side by side per workload) and a
    ratio table; the sleep workloads against their ideal; the ASGI targets."""
    notes = []
    # bench.run_order: rgun swaps places with the second server, the base build if any.
    paired = next((s for s in (BASE, "rgun+obs") if any(s in per for per in results.values())), None)
    swap = f" (rgun and {paired} swap places every other round)" if paired else ""
    for (wl, conns), per in results.items():
        w = WORKLOADS[wl]
        med = medians(per)
        g = lambda s, k: med.get(s, {}).get(k, float("nan"))
        if "rgun+obs" in med:
            notes.append(f"- {wl} @ {conns} conns: rgun+obs/rgun req/s {ratio(g('rgun+obs', 'rps'), g('rgun', 'rps'))}, "
                         f"CPU/req {ratio(g('rgun+obs', 'cpu_us'), g('rgun', 'cpu_us'))}, "
                         f"p99 {ratio(g('rgun+obs', 'p99'), g('rgun', 'p99'))}")
        if BASE in med:
            notes.append(f"- {wl} @ {conns} conns: rgun/{BASE} req/s {ratio(g('rgun', 'rps'), g(BASE, 'rps'))} (>1: this "
                         f"build is faster), CPU/req {ratio(g('rgun', 'cpu_us'), g(BASE, 'cpu_us'))}, "
                         f"p99 {ratio(g('rgun', 'p99'), g(BASE, 'p99'))}, RSS {ratio(g('rgun', 'rss'), g(BASE, 'rss'))}")
        if (wl, conns) == ("hello", 1) and "Gunicorn" in med:
            notes.append(f"- memory of master + {WORKERS} workers (hello @ 1 conn, issue 13): RSS rgun/Gunicorn "
                         f"{ratio(g('rgun', 'rss'), g('Gunicorn', 'rss'))} (target ≤ 0.75: "
                         f"{verdict(at_most(g('rgun', 'rss'), g('Gunicorn', 'rss'), 0.75))}), PSS rgun/Gunicorn "
                         f"{ratio(g('rgun', 'pss'), g('Gunicorn', 'pss'))}")
        if w.interface == "wsgi" and w.threads:
            ideal = min(conns, WORKERS * w.threads) / 0.010
            notes.append(f"- {wl} @ {conns} conns: ideal = min(conns, workers×threads = {WORKERS * w.threads}) / 10 ms = "
                         f"{ideal:.0f} req/s; achieved/ideal: "
                         + ", ".join(f"{s} {ratio(g(s, 'rps'), ideal)}" for s in SERVERS["wsgi"]))
    out = [
        f"Date (UTC): {info['date']}  ",
        f"Machine: {info['machine']}  ",
        f"Versions: {info['versions']}  ",
        f"Load average (1/5/15 min) {info['load']}  ",
        f"Settings: {WORKERS} workers each; wrk -t2 (-t1 at 1 connection: wrk needs conns >= threads), {args.duration} s per run, {args.rounds} interleaved round(s){swap}, "
        f"values are the MEDIAN over rounds (errors are summed). sleep10ms runs 4 threads per worker "
        f"(rgun --threads 4, gunicorn --threads 4 = gthread, granian --blocking-threads 4); other WSGI workloads use each "
        f"server's default (Gunicorn: sync worker).",
    ]
    for interface, title in (("wsgi", "WSGI"), ("asgi", "ASGI")):
        if not any(WORKLOADS[wl].interface == interface for wl, _ in results):
            continue
        L, R = tables(results, interface)
        out += ["", f"## {title}", "", *L, "", "Ratios (req/s: >1 means rgun is faster; p99, CPU/req, RSS, PSS: <1 means rgun is lower):",
                "", *R, ""]
        if interface == "wsgi" and tls_targets(results):
            out += ["TLS (tls_*, h2_*): every server terminates TLS itself with one ECDSA P-256 certificate (bench/tls.py); "
                    "tls_handshakes sends `Connection: close`, so each request is a new connection and a full "
                    "handshake. h2_hello is h2load (64 connections, 100 streams in flight on each, ALPN h2; no "
                    "latency percentiles): rgun and Gunicorn with `--http-protocols h2,h1` (Gunicorn's HTTP/2 needs "
                    "its gthread worker: `-k gthread --threads 4`), Granian with `--http auto`. Targets (issue 16):",
                    "", *tls_targets(results), ""]
        if interface == "wsgi" and notes:
            out += ["Memory, sleep workload vs ideal, and rgun+obs (rgun with --metrics-bind scraped every second and "
                    "--statsd-host sending to a drained UDP socket; `bench/run --observability`) against plain rgun "
                    f"in the same run (with `--baseline RGUN`, also this build against {BASE}, that executable run "
                    "beside it in the same rounds; its own ratios to the peers are the ratio table's "
                    f"'({BASE})' rows):", "", *notes, ""]
        if interface == "asgi":
            out += ["ASGI servers: rgun -k asgi, Granian --interface asgi, Uvicorn --http httptools --loop uvloop, "
                    "Gunicorn -k asgi (its own ASGI worker, uvloop when installed). asgi_sleep10ms awaits "
                    "asyncio.sleep(0.01); ws_echo is bench/ws_client.py: each connection sends a 5-byte text message "
                    "and waits for its echo, so req/s is messages/s (no latency figures).", "",
                    "Targets (issue 14):", "", *asgi_targets(results, caps), ""]
    out.append("CPU/req = utime+stime of the live server process tree (master + descendants) sampled from /proc just before "
               "and after the load, divided by requests completed; processes that exit mid-run are not counted. Peak RSS = max "
               "of the tree's summed VmRSS, sampled every 100 ms (pages shared after fork are counted in every process); peak "
               "PSS the same for Pss from smaps_rollup (a page shared by n processes counts 1/n in each). "
               "The load generator runs on the same 2-core machine and competes with the server for CPU.")
    return "\n".join(out)
