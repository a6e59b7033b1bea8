"""A rolling deploy behind HAProxy, counting failed requests: rgun and Gunicorn 27 in one run.

The scenario of tests/it/fleet/rolling.rs, for both servers: Debian's HAProxy in front
of three instances (2 workers each, the app of tests/apps/fleet_app.py), active health
checks every 200 ms (one failure marks a server DOWN). Under continuous load (three
keep-alive clients and two opening a connection per request; every fourth request a
1 MiB POST whose SHA-256 must come back) the three instances are replaced one by one
as Kubernetes does: start the new one, wait until HAProxy sees it UP, TERM the old
one, wait until it has exited.

  rgun      HAProxy checks /readyz on the operations listener (--metrics-bind);
            --shutdown-delay 3: not ready at once on TERM, still serving meanwhile
  gunicorn  HAProxy checks an application view (/healthz) on the serving port;
            Gunicorn has no shutdown delay: on TERM it closes its listeners

A failed request: a connection refused or reset, no answer, a status other than 200,
or a wrong body. Run through `bench/run --rolling` (which installs haproxy and the
pinned venv); `--kind asgi` compares `rgun -k asgi` with Gunicorn's `-k asgi`.
"""

import argparse
import hashlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

BENCH = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(BENCH)
VENV = os.environ.get("BENCH_VENV", os.path.join(BENCH, ".venv"))
APPS = os.path.join(ROOT, "tests", "apps")
HAPROXY = "/usr/sbin/haproxy"
FLEET = 3
CHECK_INTERVAL_MS = 200
SHUTDOWN_DELAY_S = 3
UPLOAD = bytes((i * 7) % 251 for i in range(1 << 20))
UPLOAD_ANSWER = "%d %s" % (len(UPLOAD), hashlib.sha256(UPLOAD).hexdigest())


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(what, check, limit=30):
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.05)
    raise SystemExit(f"rolling.py: timed out waiting for {what}")


def answers(port, path):
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
            s.sendall(f"GET {path} HTTP/1.0\r\n\r\n".encode())
            return s.recv(64)[9:12] == b"200"
    except OSError:
        return False


class Instance:
    """One server of the fleet: its serving port and the port HAProxy checks."""

    def __init__(self, server, kind, logdir, n):
        self.port = free_port()
        app = "fleet_app:application" if kind == "wsgi" else "fleet_app:app"
        cmd = [os.path.join(VENV, "bin", server), app, "-w", "2", "-b", f"127.0.0.1:{self.port}",
               "--pythonpath", APPS]
        cmd += ["--threads", "4"] if kind == "wsgi" else ["-k", "asgi"]
        if server == "rgun":
            self.check_port, self.check_path = free_port(), "/readyz"
            cmd += ["--metrics-bind", f"127.0.0.1:{self.check_port}",
                    "--shutdown-delay", str(SHUTDOWN_DELAY_S)]
        else:
            self.check_port, self.check_path = self.port, "/healthz"
        cmd.append("--no-control-socket")
        log = open(os.path.join(logdir, f"{server}-{n}.log"), "ab")
        self.proc = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL)
        wait_for(f"{server} #{n} to answer", lambda: answers(self.check_port, self.check_path))

    def stop(self, limit=60):
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(limit)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


class Haproxy:
    def __init__(self, fleet, logdir):
        self.port = free_port()
        self.admin = os.path.join(logdir, "admin.sock")
        lines = [
            "global", f"  stats socket {self.admin} level admin", "  maxconn 1000",
            "defaults", "  mode http", "  timeout connect 5s", "  timeout client 60s",
            "  timeout server 60s", "  timeout http-keep-alive 60s",
            "frontend web", f"  bind 127.0.0.1:{self.port}", "  default_backend fleet",
            "backend fleet", "  balance roundrobin",
            f"  option httpchk GET {fleet[0].check_path}", "  http-check expect status 200",
            f"  default-server inter {CHECK_INTERVAL_MS} fall 1 rise 1",
        ]
        for i, inst in enumerate(fleet):
            lines.append(f"  server old{i} 127.0.0.1:{inst.port} check port {inst.check_port}")
        for i in range(len(fleet)):
            lines.append(f"  server new{i} 127.0.0.1:9 check port 9 disabled")
        config = os.path.join(logdir, "haproxy.cfg")
        with open(config, "w") as f:
            f.write("\n".join(lines) + "\n")
        log = open(os.path.join(logdir, "haproxy.log"), "ab")
        self.proc = subprocess.Popen([HAPROXY, "-db", "-f", config], stdout=log,
                                     stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        for i in range(len(fleet)):
            self.wait_status(f"old{i}", "UP")

    def command(self, line):
        try:
            with socket.socket(socket.AF_UNIX) as s:
                s.settimeout(5)
                s.connect(self.admin)
                s.sendall(line.encode() + b"\n")
                out = b""
                while chunk := s.recv(65536):
                    out += chunk
                return out.decode()
        except OSError:
            return ""

    def status(self, server):
        rows = self.command("show stat").splitlines()
        if not rows:
            return ""
        header = rows[0].lstrip("# ").split(",")
        col = header.index("status")
        for row in rows[1:]:
            f = row.split(",")
            if len(f) > col and f[0] == "fleet" and f[1] == server:
                return f[col]
        return ""

    def wait_status(self, server, status):
        wait_for(f"HAProxy to see {server} {status}", lambda: self.status(server) == status)

    def point(self, server, inst):
        for line in (f"set server fleet/{server} addr 127.0.0.1 port {inst.port}",
                     f"set server fleet/{server} check-port {inst.check_port}",
                     f"set server fleet/{server} state ready"):
            answer = self.command(line).lower()
            if "error" in answer or "unknown" in answer:
                raise SystemExit(f"rolling.py: haproxy refused {line!r}: {answer}")

    def stop(self):
        self.proc.kill()
        self.proc.wait()


class Client(threading.Thread):
    """Requests through HAProxy until stopped, on one keep-alive connection or on a
    fresh connection each; every fourth a 1 MiB POST."""

    def __init__(self, port, keep_alive, stopping, started):
        super().__init__(daemon=True)
        self.port, self.keep_alive, self.stopping, self.started = port, keep_alive, stopping, started
        self.ok, self.failed = 0, []

    def exchange(self, sock, post):
        close = b"" if self.keep_alive else b"Connection: close\r\n"
        if post:
            sock.sendall(b"POST /upload HTTP/1.1\r\nHost: fleet\r\nContent-Length: %d\r\n%s\r\n"
                         % (len(UPLOAD), close) + UPLOAD)
        else:
            sock.sendall(b"GET / HTTP/1.1\r\nHost: fleet\r\n%s\r\n" % close)
        reader = sock.makefile("rb")
        status_line = reader.readline()
        if not status_line:
            raise ConnectionError("no answer")
        headers = {}
        while (line := reader.readline()) not in (b"\r\n", b"\n", b""):
            name, _, value = line.decode("latin-1").partition(":")
            headers[name.strip().lower()] = value.strip()
        body = reader.read(int(headers.get("content-length", "0")))
        status = int(status_line.split()[1])
        text = body.decode("latin-1")
        if status != 200:
            raise ConnectionError(f"{status} {' '.join(text.split())[:80]}")
        if (post and text != UPLOAD_ANSWER) or (not post and not text.startswith("ok ")):
            raise ConnectionError(f"wrong answer: {text[:80]}")
        return headers.get("connection", "").lower() != "close"

    def run(self):
        sock, n = None, 0
        while not self.stopping.is_set():
            n += 1
            try:
                if sock is None:
                    sock = socket.create_connection(("127.0.0.1", self.port), timeout=30)
                reusable = self.exchange(sock, n % 4 == 0)
                self.ok += 1
            except (OSError, ValueError, IndexError) as e:
                self.failed.append(f"{time.monotonic() - self.started:.3f}s: {e}")
                reusable = False
            if not (self.keep_alive and reusable) and sock is not None:
                sock.close()
                sock = None
            time.sleep(0.005)
        if sock is not None:
            sock.close()


def deploy(server, kind, logdir):
    """One rolling deploy of `server`: (requests served, failures)."""
    fleet = [Instance(server, kind, logdir, i) for i in range(FLEET)]
    haproxy = Haproxy(fleet, logdir)
    stopping, started = threading.Event(), time.monotonic()
    clients = [Client(haproxy.port, ka, stopping, started) for ka in (True, True, True, False, False)]
    new = []
    try:
        for c in clients:
            c.start()
        time.sleep(1)
        for i, old in enumerate(fleet):
            inst = Instance(server, kind, logdir, FLEET + i)
            new.append(inst)
            haproxy.point(f"new{i}", inst)
            haproxy.wait_status(f"new{i}", "UP")
            old.stop()
        time.sleep(1)
    finally:
        stopping.set()
        for c in clients:
            c.join(60)
        for inst in fleet + new:
            if inst.proc.poll() is None:
                inst.stop(10)
        haproxy.stop()
    return sum(c.ok for c in clients), [f for c in clients for f in c.failed]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--kind", choices=("wsgi", "asgi"), default="wsgi")
    ap.add_argument("--servers", default="rgun,gunicorn", help="comma-separated: rgun,gunicorn")
    args = ap.parse_args()
    if not os.path.exists(HAPROXY):
        raise SystemExit(f"rolling.py: {HAPROXY} is missing (apt-get install haproxy)")
    results = []
    for server in args.servers.split(","):
        with tempfile.TemporaryDirectory(prefix=f"rolling-{server}-") as logdir:
            served, failed = deploy(server, args.kind, logdir)
        results.append((server, served, failed))
        print(f"{server}: {served} served, {len(failed)} failed", file=sys.stderr)
        for f in failed[:10]:
            print(f"  {f}", file=sys.stderr)
    print(f"\nRolling deploy of {FLEET} instances behind HAProxy ({args.kind}), one run:\n")
    print("| server | requests served | failed requests |")
    print("|---|---|---|")
    for server, served, failed in results:
        print(f"| {server} | {served} | {len(failed)} |")


if __name__ == "__main__":
    main()
