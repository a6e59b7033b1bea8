"""CPU one rgun worker spends on a maximal request head dribbled in small pieces.

Starts `rgun -w 1` on bench/apps.py's hello app, sends a request head as large as the
default limits allow (100 fields of 8,190 bytes) in PIECE-byte writes, each its own
TCP segment, and reports the worker's user+system CPU (from /proc) between the first
byte and the answer. A head re-scanned from its start on every read costs quadratic
CPU; scanned once, it costs about what reading it costs.

    bench/.venv/bin/python bench/dribble.py --piece 1
    python3 bench/dribble.py --piece 100 --rgun /path/to/other/rgun
"""

import argparse
import os
import signal
import socket
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "bench"))
from callgrind import free_port, wait_listening  # noqa: E402


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def worker_pid(master):
    with open(f"/proc/{master}/task/{master}/children") as f:
        kids = [int(p) for p in f.read().split()]
    if len(kids) != 1:
        sys.exit(f"expected one worker, found {kids}")
    return kids[0]


def maximal_head(fields=100, field_bytes=8190):
    head = bytearray(b"GET / HTTP/1.1\r\nHost: b\r\n")
    for i in range(fields - 2):
        name = b"X-Filler-%03d: " % i
        head += name + b"f" * (field_bytes - len(name) - 2) + b"\r\n"
    head += b"Connection: close\r\n\r\n"
    return bytes(head)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--piece", type=int, default=1, help="bytes per write")
    ap.add_argument("--rgun", default=os.path.join(ROOT, "bench", ".venv", "bin", "rgun"),
                    help="the rgun to run (default: the one bench/run installs)")
    ap.add_argument("--gap-us", type=int, default=100,
                    help="pause between writes, so that each arrives on its own (µs)")
    ap.add_argument("--seconds", type=float, default=20, help="stop dribbling after this long")
    ap.add_argument("--timeout", type=int, default=60, help="rgun --timeout (s)")
    args = ap.parse_args()
    port = free_port()
    proc = subprocess.Popen(
        [args.rgun, "-w", "1", "-b", f"127.0.0.1:{port}", "--no-control-socket",
         "--timeout", str(args.timeout), "--pythonpath", os.path.join(ROOT, "bench"),
         "apps:hello"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        wait_listening(port, proc)
        worker = worker_pid(proc.pid)
        head = maximal_head()
        with socket.create_connection(("127.0.0.1", port), timeout=args.timeout + 10) as s:
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            cpu0, t0 = cpu_seconds(worker), time.monotonic()
            sent = 0
            try:
                gap = args.gap_us / 1e6
                while sent < len(head) and time.monotonic() - t0 < args.seconds:
                    s.sendall(head[sent:sent + args.piece])
                    sent += args.piece
                    if gap:
                        time.sleep(gap)
                answer = s.recv(64) if sent >= len(head) else b"(stopped dribbling)"
            except OSError as e:
                answer = f"({e})".encode()
            took = time.monotonic() - t0
            cpu = cpu_seconds(worker) - cpu0
        status = answer.split(b"\r\n", 1)[0].decode(errors="replace") or "(closed, no answer)"
        print(f"{min(sent, len(head))} of a {len(head)}-byte head in {args.piece}-byte pieces: "
              f"worker CPU {cpu:.2f} s over {took:.1f} s; answer: {status}")
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()


if __name__ == "__main__":
    main()
