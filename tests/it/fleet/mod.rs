//! What a fleet behind Kubernetes or a load balancer needs, against a real daemon:
//! the master's probes on the operations listener (`probes`), the worker count and
//! memory limit from the cgroup (`sizing`), rgun as a container's PID 1 (`pid1`), the
//! shutdown delay (`shutdown_delay`), workers that size themselves (`autoscale`), the
//! listen backlog served rather than reset on a stop (`backlog`), the Kubernetes
//! manifests (`kubernetes`), and a rolling deploy of three instances behind HAProxy
//! under load (`rolling`).
//!
//! Every wait is bounded; nothing sleeps for readiness.

mod autoscale;
mod backlog;
mod kubernetes;
mod pid1;
mod probes;
mod rolling;
mod shutdown_delay;
mod sizing;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use crate::support::Server;

/// The operations listener's port, from its start-up line.
pub fn ops_port(server: &Server) -> u16 {
    server.wait_for_log("Metrics at: http://127.0.0.1:", Duration::from_secs(10));
    let log = server.log();
    let rest = log.split("Metrics at: http://127.0.0.1:").nth(1).unwrap();
    rest.split('/').next().unwrap().parse().unwrap()
}

/// One raw exchange with the operations listener: (status code, whole answer).
/// `None` when the connection is refused or closed without an answer.
pub fn probe(port: u16, request: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(request.as_bytes()).ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    let code = out.get(9..12)?.parse().ok()?;
    Some((code, out))
}

/// `GET path` as HAProxy's `option httpchk GET path` sends it: HTTP/1.0, no `Host`.
pub fn get(port: u16, path: &str) -> Option<(u16, String)> {
    probe(port, &format!("GET {path} HTTP/1.0\r\n\r\n"))
}
