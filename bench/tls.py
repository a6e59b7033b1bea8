"""TLS benchmark: rgun vs Granian vs Gunicorn, 2 workers each, all serving the same
ECDSA P-256 certificate and PKCS#8 key (made here with `cryptography`), measured as
bench.py measures (wrk req/s and latency, server CPU per request, peak RSS):

  tls_hello       wrk over https with keep-alive on bench/apps.py:hello
  tls_handshakes  wrk with `Connection: close`: every request is a new TCP connection
                  and a full TLS handshake (wrk does not resume sessions), so req/s is
                  new TLS connections per second

Prints a table; writes nothing. Run by `bench/run --tls [options]`, or

    bench/.venv/bin/python bench/tls.py [--duration 5] [--rounds 1] [--connections 1,64]
"""

import argparse
import datetime
import http.client
import os
import ssl
import statistics
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench  # noqa: E402

WORKLOADS = {
    "tls_hello": ("apps:hello", []),
    "tls_handshakes": ("apps:hello", ["-H", "Connection: close"]),
}
CERT = {}


def make_certificate(directory):
    """A self-signed localhost certificate and its key, as PEM files in `directory`."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1)).not_valid_after(now + datetime.timedelta(days=7))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = os.path.join(directory, "cert.pem"), os.path.join(directory, "key.pem")
    with open(cert_path, "wb") as f:
        f.write(cert.public_bytes(serialization.Encoding.PEM))
    with open(key_path, "wb") as f:
        f.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption()))
    return cert_path, key_path


PLAIN_SERVER_CMD = bench.server_cmd


def server_cmd(server, app, port, threads):
    cmd = PLAIN_SERVER_CMD(server, app, port, threads)
    if server == "Granian":
        return cmd[:-1] + ["--ssl-certificate", CERT["cert"], "--ssl-keyfile", CERT["key"], cmd[-1]]
    return cmd[:-1] + ["--certfile", CERT["cert"], "--keyfile", CERT["key"], cmd[-1]]


def https_connection(host, port, timeout=None):
    """bench.start's readiness probe, over TLS (the certificate is our own)."""
    return http.client.HTTPSConnection(host, port, timeout=timeout, context=ssl._create_unverified_context())


def wrk(port, conns, duration, extra):
    cmd = ["wrk", f"-t{min(2, conns)}", f"-c{conns}", f"-d{duration}s", "--timeout", "5s", "--latency", *extra,
           f"https://127.0.0.1:{port}/"]
    return bench.subprocess.run(cmd, capture_output=True, text=True, check=True).stdout


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--duration", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--workloads", default=",".join(WORKLOADS))
    ap.add_argument("--connections", default="1,64")
    args = ap.parse_args()
    logdir = tempfile.mkdtemp(prefix="rgun-tls-bench-")
    CERT["cert"], CERT["key"] = make_certificate(logdir)
    bench.server_cmd = server_cmd
    bench.wrk = wrk
    bench.http.client.HTTPConnection = https_connection
    print(f"load at start: {bench.loadavg()}; server logs and certificate: {logdir}", flush=True)
    conns = [int(c) for c in args.connections.split(",")]
    rows = []
    for wl in args.workloads.split(","):
        app, extra = WORKLOADS[wl]
        results = {(c, s): [] for c in conns for s in bench.SERVERS}
        for rnd in range(args.rounds):
            for server in bench.SERVERS:
                try:
                    proc, port = bench.start(server, app, None, logdir)
                except RuntimeError as e:
                    print(f"[{wl} r{rnd + 1}] {server}: {e}", flush=True)
                    continue
                try:
                    wrk(port, 64, 1, extra)  # warm-up
                    for c in conns:
                        r = bench.measure(proc, port, c, args.duration, extra)
                        results[(c, server)].append(r)
                        print(f"[{wl} r{rnd + 1}] {server:8} c={c:<3} {r['rps']:9.0f} req/s  p99 {r['p99']:7.2f} ms  "
                              f"cpu {r['cpu_us']:6.0f} us/req  rss {r['rss']:6.1f} MiB  errors {r['errors']}",
                              flush=True)
                except bench.subprocess.CalledProcessError as e:
                    print(f"[{wl} r{rnd + 1}] {server}: wrk failed: {e.stderr.strip()}", flush=True)
                except (RuntimeError, OSError) as e:
                    print(f"[{wl} r{rnd + 1}] {server}: {e}", flush=True)
                finally:
                    bench.stop(proc)
        for c in conns:
            med = {s: {k: statistics.median(r[k] for r in rs) for k in ("rps", "p99", "cpu_us", "rss")}
                   for s in bench.SERVERS if (rs := results[(c, s)])}
            for s in bench.SERVERS:
                m = med.get(s)
                rows.append(f"| {wl} | {c} | {s} | " + (" | ".join(
                    (bench.fmt(m["rps"]), bench.fmt(m["p99"], 2), bench.fmt(m["cpu_us"]), bench.fmt(m["rss"], 1)))
                    if m else "failed | | |") + " |")
            g = lambda s, k: med.get(s, {}).get(k, float("nan"))
            rows.append(f"| {wl} | {c} | rgun/Granian | {bench.ratio(g('rgun', 'rps'), g('Granian', 'rps'))} "
                        f"| {bench.ratio(g('rgun', 'p99'), g('Granian', 'p99'))} "
                        f"| {bench.ratio(g('rgun', 'cpu_us'), g('Granian', 'cpu_us'))} "
                        f"| {bench.ratio(g('rgun', 'rss'), g('Granian', 'rss'))} |")
    print(f"\nload at end: {bench.loadavg()}; {args.duration} s per run, {args.rounds} round(s), median\n")
    print("| workload | conns | server | req/s | p99 ms | CPU µs/req | peak RSS MiB |")
    print("|---|---:|---|---:|---:|---:|---:|")
    print("\n".join(rows))


if __name__ == "__main__":
    sys.exit(main())
