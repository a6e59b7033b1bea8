"""An app that leaves an orphan behind, as apps that daemonize a helper do: `/orphan`
forks a child that forks a grandchild and exits at once; the grandchild, re-parented to
PID 1 (rgun, in a container), exits with code 3 a moment later."""

import os
import time


def application(environ, start_response):
    body = b"ok"
    if environ["PATH_INFO"] == "/orphan":
        child = os.fork()
        if child == 0:
            if os.fork() == 0:
                time.sleep(0.3)
                os._exit(3)
            os._exit(0)
        os.waitpid(child, 0)
        body = b"orphaned"
    elif environ["PATH_INFO"] == "/ppid":
        body = str(os.getppid()).encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
