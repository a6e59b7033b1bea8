"""User-space instructions per request in one rgun worker, counted by callgrind.

Runs `rgun -w 1` under `valgrind --tool=callgrind --trace-children=yes` twice, once
serving SHORT and once LONG sequential keep-alive requests, and prints
(worker instructions at LONG - at SHORT) / (LONG - SHORT): start-up, import and
shutdown cancel out. Instruction counts do not depend on the machine's load, so two
builds (or two apps) compare to the instruction. Kernel time is not counted.

    bench/.venv/bin/python bench/callgrind.py                 # hello world, wrk's request
    bench/.venv/bin/python bench/callgrind.py --request browser
    bench/.venv/bin/python bench/callgrind.py --app apps:k64  # any app in bench/
    bench/.venv/bin/python bench/callgrind.py --tls           # the same over TLS 1.3
    bench/.venv/bin/python bench/callgrind.py --tls --fresh   # a new connection (handshake) each
    bench/.venv/bin/python bench/callgrind.py --uwsgi         # --protocol uwsgi, nginx's packet
    bench/.venv/bin/python bench/callgrind.py -k asgi --app asgi_apps:sleep10ms --connections 256
    bench/.venv/bin/python bench/callgrind.py --h2             # HTTP/2 in the clear (h2c), one stream at a time
    bench/.venv/bin/python bench/callgrind.py --post 1024 --app apps:post_1m --short 50 --long 250

With --connections N, N keep-alive connections each send a request, then every answer
is read, round after round (requests counts them all), so a turn of the worker's loop
serves a batch as under load; -k asgi runs the ASGI worker.
    bench/.venv/bin/python bench/callgrind.py --rgun-args='--statsd-host 127.0.0.1:9125'
    RGUN=.venv/bin/rgun python3 bench/callgrind.py            # another install (e.g. dev)
"""

import argparse
import glob
import os
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The request heads sent: what wrk sends (the benchmark's load), and what a browser
# behind a proxy sends (more headers, so a bigger environ).
REQUESTS = {
    "wrk": "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n",
    "browser": (
        "GET {path} HTTP/1.1\r\nHost: example.com\r\n"
        "User-Agent: Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0\r\n"
        "Accept: text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8\r\n"
        "Accept-Language: en-US,en;q=0.5\r\nAccept-Encoding: gzip, deflate, br\r\n"
        "Cookie: sessionid=0123456789abcdef; csrftoken=fedcba9876543210\r\n"
        "Upgrade-Insecure-Requests: 1\r\nSec-Fetch-Dest: document\r\n"
        "Sec-Fetch-Mode: navigate\r\nX-Forwarded-For: 203.0.113.7\r\n"
        "X-Forwarded-Proto: https\r\nX-Real-IP: 203.0.113.7\r\n\r\n"
    ),
}
# --uwsgi: the variables nginx sends for wrk's request through Debian's uwsgi_params
# (empty ones too), in its order.
UWSGI_VARS = [
    ("QUERY_STRING", ""), ("REQUEST_METHOD", "GET"), ("CONTENT_TYPE", ""),
    ("CONTENT_LENGTH", ""), ("REQUEST_URI", "{path}"), ("PATH_INFO", "{path}"),
    ("DOCUMENT_ROOT", "/usr/share/nginx/html"), ("SERVER_PROTOCOL", "HTTP/1.1"),
    ("REQUEST_SCHEME", "http"), ("REMOTE_ADDR", "127.0.0.1"), ("REMOTE_PORT", "51234"),
    ("SERVER_PORT", "80"), ("SERVER_NAME", "localhost"), ("HTTP_HOST", "127.0.0.1"),
]
UWSGI = []  # [True] with --uwsgi
BODY = []  # [KiB] with --post


def with_body(request, kib):
    """`request` (a GET head) as a POST of `kib` KiB, sent with its Content-Length."""
    head = request.replace(b"GET ", b"POST ", 1)[:-2]
    return head + f"Content-Length: {kib * 1024}\r\n\r\n".encode() + b"a" * (kib * 1024)


def uwsgi_packet(path, close=False):
    """A uwsgi request packet of UWSGI_VARS for `path`."""
    pairs = UWSGI_VARS + ([("HTTP_CONNECTION", "close")] if close else [])
    data = b""
    for key, value in pairs:
        key, value = key.encode(), value.format(path=path).encode()
        data += len(key).to_bytes(2, "little") + key + len(value).to_bytes(2, "little") + value
    return b"\0" + len(data).to_bytes(2, "little") + b"\0" + data


# pip-installed by bench/run; $RGUN for another install.
RGUN = os.environ.get("RGUN") or os.path.join(ROOT, "bench", ".venv", "bin", "rgun")
EXTRA_ARGS = []  # --rgun-args


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --tls: (certfile, keyfile) every run serves, and the client side's context.
TLS = {}


def connect(port, timeout):
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    return TLS["client"].wrap_socket(s, server_hostname="localhost") if TLS else s


def wait_listening(port, proc, limit=120):
    """Until a request gets an answer: under valgrind a worker boots in seconds."""
    started = time.monotonic()
    while time.monotonic() - started < limit:
        if proc.poll() is not None:
            sys.exit(f"rgun exited with {proc.returncode} before serving")
        try:
            with connect(port, 30) as s:
                s.sendall(uwsgi_packet("/", close=True) if UWSGI else b"GET / HTTP/1.1\r\nHost: b\r\nConnection: close\r\n\r\n")
                if s.recv(16).startswith(b"HTTP/1.1"):
                    return
        except OSError:
            time.sleep(0.5)
    sys.exit(f"rgun did not answer within {limit} s")


def read_response(sock, buf):
    """Reads one Content-Length response off `sock`; returns the bytes left over."""
    while b"\r\n\r\n" not in buf:
        chunk = sock.recv(65536)
        if not chunk:
            sys.exit("the server closed the connection")
        buf += chunk
    head, _, rest = buf.partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    if not head.startswith(b"HTTP/1.1 200"):
        sys.exit(f"unexpected response: {head[:80]!r}")
    while len(rest) < length:
        chunk = sock.recv(65536)
        if not chunk:
            sys.exit("the server closed the connection mid-body")
        rest += chunk
    return rest[length:]


def h2_frame(kind, flags, stream, payload=b""):
    return len(payload).to_bytes(3, "big") + bytes([kind, flags]) + stream.to_bytes(4, "big") + payload


def h2_requests(port, path, requests):
    """`requests` GETs over one h2c connection with prior knowledge, one stream at a
    time (each waits for its response's END_STREAM). The HPACK block is the same for
    every request (indexed :method, :scheme, :path /; a literal :authority without
    indexing), so each costs the server the same."""
    with connect(port, 60) as s:
        # The preface, empty SETTINGS, and the connection window opened wide at once,
        # so no WINDOW_UPDATE per response is needed.
        s.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + h2_frame(4, 0, 0)
                  + h2_frame(8, 0, 0, (0x7FFF0000).to_bytes(4, "big")))
        authority = b"127.0.0.1"
        block = b"\x82\x86" + (b"\x84" if path == "/" else b"\x04" + bytes([len(path)]) + path.encode())
        block += b"\x01" + bytes([len(authority)]) + authority
        buf = b""
        for i in range(requests):
            stream = 2 * i + 1
            s.sendall(h2_frame(1, 0x5, stream, block))  # HEADERS, END_STREAM | END_HEADERS
            done = False
            while not done:
                while len(buf) < 9 or len(buf) < 9 + int.from_bytes(buf[:3], "big"):
                    chunk = s.recv(65536)
                    if not chunk:
                        sys.exit("the server closed the HTTP/2 connection")
                    buf += chunk
                length = int.from_bytes(buf[:3], "big")
                kind, flags = buf[3], buf[4]
                sid = int.from_bytes(buf[5:9], "big") & 0x7FFFFFFF
                buf = buf[9 + length:]
                if kind == 4 and not flags & 1:  # the server's SETTINGS: acknowledged
                    s.sendall(h2_frame(4, 1, 0))
                elif kind == 3 or kind == 7:  # RST_STREAM, GOAWAY
                    sys.exit(f"the server sent frame type {kind}")
                elif sid == stream and kind in (0, 1) and flags & 1:
                    done = True


def fresh_requests(port, request, requests):
    """`requests` GETs, each on a new connection that asks to be closed after it (with
    --tls, a full handshake each: what bench's tls_handshakes measures)."""
    if UWSGI:
        request = uwsgi_packet(UWSGI[0], close=True)
    else:
        request = request.replace(b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n", 1)
    for _ in range(requests):
        with connect(port, 60) as s:
            s.sendall(request)
            read_response(s, b"")


def worker_instructions(app, requests, path, kind="wrk", worker_class="sync", connections=1, keep=None, fresh=False, h2=False):
    """Instructions the worker process executed while serving `requests` GETs over
    `connections` connections in lockstep (or each on a new connection: `fresh`)."""
    with tempfile.TemporaryDirectory(prefix="rgun-callgrind-") as out:
        port = free_port()
        # No %p in --callgrind-out-file: rgun rewrites its process title over argv,
        # which valgrind re-reads in forked children. Each process writes
        # callgrind.out.<pid> in the working directory instead.
        cmd = [
            "valgrind", "--tool=callgrind", "--trace-children=yes", "--quiet",
            RGUN, "-k", worker_class, "-w", "1", "--worker-connections", str(max(1000, 2 * connections)), "-b", f"127.0.0.1:{port}", "--no-control-socket",
            "--pythonpath", os.path.join(ROOT, "bench"), app, *EXTRA_ARGS,
        ] + (["--certfile", TLS["cert"], "--keyfile", TLS["key"]] if TLS else []) + (["--http2-cleartext"] if h2 else [])
        # A fixed hash seed: with random ones, dict probing differs from run to run.
        env = dict(os.environ, PYTHONHASHSEED="0")
        proc = subprocess.Popen(
            cmd, cwd=out, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        try:
            wait_listening(port, proc)
            request = uwsgi_packet(path) if UWSGI else REQUESTS[kind].format(path=path, port=port).encode()
            if BODY:
                request = with_body(request, BODY[0])
            if fresh:
                fresh_requests(port, request, requests)
            if h2:
                h2_requests(port, path, requests)
            socks = [connect(port, 60) for _ in range(0 if fresh or h2 else connections)]
            try:
                bufs = [b""] * connections
                for _ in range(len(socks) and requests // connections):
                    for s in socks:
                        s.sendall(request)
                    for i, s in enumerate(socks):
                        bufs[i] = read_response(s, bufs[i])
            finally:
                for s in socks:
                    s.close()
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=120)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        totals = []
        for f in glob.glob(os.path.join(out, "callgrind.out.*")):
            with open(f) as fh:
                text = fh.read()
            cmdline = next((l for l in text.splitlines() if l.startswith("cmd:")), "")
            total = next((l for l in text.splitlines() if l.startswith("totals:")), None)
            if total is not None:
                totals.append((int(total.split()[1]), cmdline))
        if not totals:
            sys.exit("callgrind wrote no profile")
        if keep:
            os.makedirs(keep, exist_ok=True)
            for f in glob.glob(os.path.join(out, "callgrind.out.*")):
                os.replace(f, os.path.join(keep, f"{os.path.basename(f)}.{requests}"))
        # The worker is the process that ran the most: it imported the app and served.
        return max(totals)[0]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--app", default="apps:hello", help="MODULE:CALLABLE in bench/ (default apps:hello)")
    ap.add_argument("--path", default="/", help="request path")
    ap.add_argument("--request", choices=sorted(REQUESTS), default="wrk", help="request head to send")
    ap.add_argument("--short", type=int, default=2000, help="requests in the short run")
    ap.add_argument("--long", type=int, default=12000, help="requests in the long run")
    ap.add_argument("--tls", action="store_true", help="over TLS 1.3 (bench/tls.py's certificate)")
    ap.add_argument("-k", "--worker-class", default="sync", help="rgun's -k (sync, asgi)")
    ap.add_argument("--connections", type=int, default=1, help="connections sending in lockstep")
    ap.add_argument("--fresh", action="store_true", help="a new connection for each request (Connection: close)")
    ap.add_argument("--h2", action="store_true", help="HTTP/2 with prior knowledge in the clear (--http2-cleartext)")
    ap.add_argument("--keep", help="directory to keep the profiles in (for callgrind_annotate)")
    ap.add_argument("--uwsgi", action="store_true", help="--protocol uwsgi: each request a uwsgi packet, as nginx's uwsgi_pass sends wrk's")
    ap.add_argument("--post", type=int, metavar="KIB", help="each request a POST with a body of KIB KiB "
                    "(e.g. --post 1024 --app apps:post_1m --short 50 --long 250)")
    ap.add_argument("--rgun-args", default="", help="more rgun flags, e.g. '--metrics-bind 127.0.0.1:9100'")
    args = ap.parse_args()
    EXTRA_ARGS.extend(args.rgun_args.split())
    if args.uwsgi:
        EXTRA_ARGS.extend(["--protocol", "uwsgi"])
        UWSGI.append(args.path)
    if args.post is not None:
        if args.uwsgi or args.h2 or args.fresh:
            sys.exit("--post goes with plain keep-alive requests only (not --uwsgi, --h2, --fresh)")
        BODY.append(args.post)
    if args.tls:
        sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
        import tls as tls_bench  # bench/tls.py

        TLS["cert"], TLS["key"] = tls_bench.make_certificate(tempfile.mkdtemp(prefix="rgun-callgrind-tls-"))
        TLS["client"] = ssl._create_unverified_context()
        TLS["client"].minimum_version = ssl.TLSVersion.TLSv1_3
    if not os.path.exists(RGUN):
        sys.exit(f"{RGUN} is missing: bench/run installs rgun into bench/.venv")
    run = lambda n: worker_instructions(args.app, n, args.path, args.request, args.worker_class, args.connections, args.keep, args.fresh, args.h2)
    short, long = run(args.short), run(args.long)
    per_request = (long - short) / (args.long - args.short)
    print(f"{args.app} (-k {args.worker_class}, {args.connections} connections), {'a uwsgi packet (nginx, wrk)' if args.uwsgi else args.request + ' request'}{' over TLS' if args.tls else ''}{', a new connection each' if args.fresh else ''}{', HTTP/2 (h2c)' if args.h2 else ''}{f', a POST of {args.post} KiB' if BODY else ''}: {per_request:,.0f} instructions per request "
          f"(worker: {short:,} at {args.short} requests, {long:,} at {args.long})")


if __name__ == "__main__":
    main()
