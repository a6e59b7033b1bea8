//! Faults injected into a running server (issue 25). Each test pins what the server
//! does and what the operator sees (log lines, `status`, metrics): `workers`, a worker
//! out of descriptors, a boot killed by a signal, a crash after serving, a stopped
//! worker; `preload`, signals and failures around a `--preload` reload (the master
//! re-executing); `phases`, the master's state machine over real processes.

mod phases;
mod preload;
mod workers;

use std::process::Command;

use serde_json::Value;

use crate::support::{rgunctl_bin, write_file, Server, ServerBuilder};

/// `status`'s result.
fn status(s: &Server) -> Value {
    s.status()["result"].clone()
}

/// The Prometheus exposition, through `rgunctl metrics`.
fn metrics_text(s: &Server) -> String {
    crate::support::ctl(s, &["metrics"])
        .assert_ok("rgunctl metrics")
        .stdout
        .clone()
}

/// An app whose import sleeps while `slow` exists in its directory and kills itself
/// with SIGKILL while `suicide` does.
const BOOT_APP: &str = r#"
import os, signal, time
here = os.path.dirname(os.path.abspath(__file__))
if os.path.exists(os.path.join(here, "slow")):
    time.sleep(2)
if os.path.exists(os.path.join(here, "suicide")):
    os.kill(os.getpid(), signal.SIGKILL)

def application(environ, start_response):
    start_response("200 OK", [("Content-Length", "2")])
    return [b"ok"]
"#;

fn boot_server(dir: &std::path::Path) -> Server {
    write_file(dir, "booted.py", BOOT_APP);
    ServerBuilder::new("booted:application")
        .workers(2)
        .arg("--chdir")
        .arg(dir.to_str().unwrap())
        .start()
}

fn reload_in_background(s: &Server) -> std::thread::JoinHandle<std::process::Output> {
    let mut cmd = Command::new(rgunctl_bin());
    cmd.arg("-s")
        .arg(&s.ctl_path)
        .arg("reload")
        .stdin(std::process::Stdio::null());
    std::thread::spawn(move || cmd.output().expect("run rgunctl reload"))
}
