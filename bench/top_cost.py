"""What watching costs the master: its CPU under a hello load, alone, with `rgunctl top` attached, and with `rgunctl status` once a second.

Starts `rgun -w 2 apps:hello` (bench/.venv's release build, or $RGUN), then, ROUNDS
times in turn, runs wrk on it for DURATION seconds in each of three cases:

  alone     nothing else talks to the master
  top       `rgunctl top` in a real terminal (a tmux session of its own, 150x45):
            one `status` a second and the `watch` event stream, as an operator has it
  status    `rgunctl status` run once a second (a new process and connection each)

and reads the master's CPU time before and after from /proc/PID/schedstat (time on a
CPU, in nanoseconds; /proc/PID/stat's utime+stime, in clock ticks, is printed beside
it). The master serves no request, so this is the cost of its loop, the scoreboard
and whatever the watcher asks of it. `rgunctl top`'s own CPU (its terminal pane's
processes) is printed too. With --screen, the last `top` screen is printed (tmux
capture-pane).

    bench/.venv/bin/python bench/top_cost.py
    bench/.venv/bin/python bench/top_cost.py --duration 20 --rounds 3 --screen
"""

import argparse
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

BENCH = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(BENCH)
RGUN = os.environ.get("RGUN") or os.path.join(BENCH, ".venv", "bin", "rgun")
RGUNCTL = os.path.join(os.path.dirname(RGUN), "rgunctl")
CASES = ("alone", "top", "status")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_ns(pid):
    """Nanoseconds `pid` has spent on a CPU (schedstat), and utime+stime in ticks."""
    with open(f"/proc/{pid}/schedstat") as f:
        on_cpu = int(f.read().split()[0])
    with open(f"/proc/{pid}/stat") as f:
        # The command name may hold spaces: the fields after it start past ')'.
        fields = f.read().rsplit(")", 1)[1].split()
    return on_cpu, int(fields[11]) + int(fields[12])


def wait_for(what, check, limit=30):
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.1)
    sys.exit(f"top_cost.py: timed out waiting for {what}")


def answers(port):
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
            s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            return s.recv(16).startswith(b"HTTP/1.1 200")
    except OSError:
        return False


class Tmux:
    """`rgunctl top` in a tmux server of its own."""

    def __init__(self, directory, ctl):
        self.socket = os.path.join(directory, "tmux.sock")
        self.env = dict(os.environ, TERM="xterm-256color")
        top = f"{RGUNCTL} -s {ctl} top"
        self.cmd("new-session", "-d", "-s", "top", "-x", "150", "-y", "45", top)

    def cmd(self, *args):
        return subprocess.run(["tmux", "-S", self.socket, *args], env=self.env, stdin=subprocess.DEVNULL,
                              capture_output=True, text=True, check=False)

    def screen(self):
        return self.cmd("capture-pane", "-p", "-t", "top").stdout

    def cpu_ms(self):
        """Milliseconds on a CPU of the pane's processes (`rgunctl top` itself)."""
        pids = [self.cmd("display", "-p", "-t", "top", "#{pane_pid}").stdout.strip()]
        total = 0
        while pids:
            pid = pids.pop()
            try:
                total += cpu_ns(pid)[0]
                with open(f"/proc/{pid}/task/{pid}/children") as f:
                    pids.extend(f.read().split())
            except (OSError, ValueError):
                pass
        return total / 1e6

    def close(self):
        self.cmd("kill-server")


def status_every_second(ctl, stop):
    while not stop.wait(1.0):
        subprocess.run([RGUNCTL, "-s", ctl, "status"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)


def run_case(case, master, port, ctl, directory, duration, connections):
    watcher = None
    stop = threading.Event()
    if case == "top":
        watcher = Tmux(directory, ctl)
        wait_for("rgunctl top's first frame", lambda: f"master {master}" in watcher.screen())
    elif case == "status":
        watcher = threading.Thread(target=status_every_second, args=(ctl, stop))
        watcher.start()
    before = cpu_ns(master)
    watcher_before = watcher.cpu_ms() if case == "top" else 0
    wrk = subprocess.run(["wrk", "-t", "2", "-c", str(connections), "-d", f"{duration}s", f"http://127.0.0.1:{port}/"],
                         capture_output=True, text=True, check=True)
    after = cpu_ns(master)
    screen = None
    own = None
    if case == "top":
        own = watcher.cpu_ms() - watcher_before
        screen = watcher.screen()
        if f"master {master}" not in screen:
            sys.exit(f"top_cost.py: rgunctl top is not showing the master:\n{screen}")
        watcher.close()
    elif case == "status":
        stop.set()
        watcher.join()
    requests = int(re.search(r"(\d+) requests in", wrk.stdout).group(1))
    return (after[0] - before[0]) / 1e6, after[1] - before[1], requests, own, screen


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--duration", type=int, default=20, help="seconds of wrk per case (default 20)")
    ap.add_argument("--rounds", type=int, default=3, help="times each case runs, in turn (default 3)")
    ap.add_argument("--connections", type=int, default=16, help="wrk's connections (default 16)")
    ap.add_argument("--screen", action="store_true", help="print the last rgunctl top screen")
    args = ap.parse_args()
    for tool in ("wrk", "tmux"):
        if not shutil.which(tool):
            sys.exit(f"top_cost.py: {tool} is missing (apt-get install {tool})")
    if not os.path.exists(RGUN):
        sys.exit(f"{RGUN} is missing: bench/run installs rgun into bench/.venv")
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="rgun-top-cost-") as directory:
        ctl = os.path.join(directory, "rgun.ctl")
        log = open(os.path.join(directory, "rgun.log"), "w")
        server = subprocess.Popen([RGUN, "-w", "2", "-b", f"127.0.0.1:{port}", "--chdir", BENCH,
                                   "--control-socket", ctl, "apps:hello"], stdout=log, stderr=log)
        try:
            wait_for("rgun to answer", lambda: answers(port))
            results = {case: [] for case in CASES}
            screen = None
            top_own = []
            for _ in range(args.rounds):
                for case in CASES:
                    ms, ticks, requests, own, shown = run_case(case, server.pid, port, ctl, directory, args.duration,
                                                          args.connections)
                    results[case].append((ms, ticks, requests))
                    screen = shown or screen
                    if own is not None:
                        top_own.append(own)
                    print(f"{case:>6}: master {ms:7.1f} ms on CPU ({ticks} ticks) over {args.duration} s, "
                          f"{requests} requests" + (f"; rgunctl top itself {own:.0f} ms" if own is not None else ""),
                          file=sys.stderr)
        finally:
            server.terminate()
            server.wait(30)
    print(f"\nMaster CPU under wrk -c {args.connections} on apps:hello (rgun -w 2), {args.duration} s a run, "
          f"{args.rounds} runs each (median, and every run):\n")
    print("| watcher | master CPU ms per run (median) | per second | runs (ms) | requests per run (median) |")
    print("|---|---:|---:|---|---:|")
    for case in CASES:
        ms = [r[0] for r in results[case]]
        median = statistics.median(ms)
        requests = statistics.median(r[2] for r in results[case])
        runs = ", ".join(f"{m:.1f}" for m in ms)
        print(f"| {case} | {median:.1f} | {median / args.duration:.2f} | {runs} | {requests:.0f} |")
    print(f"\n`rgunctl top`'s own process: {statistics.median(top_own):.0f} ms on CPU per run (median).")
    if args.screen and screen:
        print(f"\nThe last `rgunctl top` screen (tmux capture-pane):\n\n{screen}")


if __name__ == "__main__":
    main()
