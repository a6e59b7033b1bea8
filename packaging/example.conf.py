# /etc/rgun/example.conf.py: configuration of the rgun@example service.
#
# A Gunicorn configuration file: the same setting names and hooks, so an existing
# gunicorn.conf.py works as is. It is Python, evaluated at start-up (and again by
# every worker and by the process that runs master hooks), so keep it free of side
# effects. Check it with:
#   rgun -c /etc/rgun/example.conf.py --print-config   # the effective settings
#   rgun -c /etc/rgun/example.conf.py --check-config   # and that the app imports
# Under the rgun@.service unit the file must be readable by the user rgun.

import multiprocessing  # modules are not settings; importing is fine

# The application, as on Gunicorn's command line: MODULE:CALLABLE, or a factory such
# as "example:create_app()".
wsgi_app = "example.wsgi:application"
# Where the code lives: rgun changes to this directory and puts it on sys.path.
chdir = "/srv/example"
# For a virtualenv, install rgun into it (`/srv/example/.venv/bin/pip install rgun`)
# and run its rgun (`systemctl edit rgun@example`: ExecStart= then
# ExecStart=/srv/example/.venv/bin/rgun -c /etc/rgun/example.conf.py).

# A unix socket for nginx on the same host (proxy_pass http://unix:/run/rgun/example.sock).
# Repeatable: a list binds several addresses, e.g. ["unix:/run/rgun/example.sock",
# "127.0.0.1:8000"]. Ignored when systemd passes sockets (rgun@example.socket).
bind = ["unix:/run/rgun/example.sock"]

# Worker processes, each with its own Python interpreter. Changeable at run time
# with `rgunctl scale N` (not written back here: set the new value here too).
workers = multiprocessing.cpu_count() * 2 + 1
# Python threads per worker. 1 (the default) is right for CPU-bound apps; more
# helps apps that wait on databases and HTTP APIs.
threads = 1

# A request running longer than this (seconds) gets its worker aborted, with every
# thread's Python stack in the error log, and the worker replaced. 0 disables.
timeout = 30
# On stop, reload or scale-down, workers get this long to finish requests in
# flight. Keep TimeoutStopSec= of the unit above it.
graceful_timeout = 30
# Seconds an idle keep-alive connection stays open. Behind nginx without upstream
# keep-alive, the default (2) is fine; with `keepalive` in nginx's upstream block,
# make this longer than nginx's keepalive_timeout.
keepalive = 2

# Recycle workers: after max_requests requests (plus up to max_requests_jitter
# more, so they do not all restart at once), or when a worker's resident memory
# exceeds max_worker_rss MiB (rgun's addition). 0 turns each off.
max_requests = 10000
max_requests_jitter = 1000
max_worker_rss = 512

# Peers allowed to set the URL scheme with X-Forwarded-Proto (and -Protocol, -Ssl).
# Connections on unix sockets are always trusted.
forwarded_allow_ips = "127.0.0.1,::1"

# Logs. "-" sends the error log to stderr, which systemd puts in the journal
# (`journalctl -u rgun@example`). Files under /var/log/rgun are rotated by
# /etc/logrotate.d/rgun, which asks rgun to reopen them (rgunctl reopen-logs).
accesslog = "/var/log/rgun/example.access.log"
errorlog = "-"
# errorlog = "/var/log/rgun/example.error.log"
loglevel = "info"

# Drop privileges in the workers. Only when rgun starts as root: the rgun@.service
# unit already runs everything as the user rgun (User=rgun), so leave these unset.
# user = "www-data"
# group = "www-data"

# The control socket (rgunctl). The unit sets it to /run/rgun/example.ctl through
# RGUN_CMD_ARGS, which takes precedence over this file.
# control_socket = "/run/rgun/example.ctl"
# control_socket_mode = 0o600


# Server hooks: Gunicorn's names, arguments and call points.

def post_fork(server, worker):
    # In the new worker, before the application is imported.
    server.log.info("Worker spawned (pid: %s)", worker.pid)


def when_ready(server):
    # Runs in rgun's hook host, a child of the master with its own interpreter: it
    # can log, call out or write files, but cannot change the master's memory.
    server.log.info("Server is ready. Spawning workers")
