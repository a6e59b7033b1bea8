//! systemd's notify protocol (`NOTIFY_SOCKET`): READY once every first-generation worker
//! is ready, RELOADING/READY around reloads, STOPPING, STATUS, and WATCHDOG pings
//! while the loop runs with a worker ready. A no-op when not under systemd.

use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::time::{Duration, Instant};

pub struct Notifier {
    target: Option<(UnixDatagram, SocketAddr)>,
    /// The NOTIFY_SOCKET value, for a new master after USR2.
    path: Option<String>,
    watchdog: Option<Duration>,
    last_ping: Instant,
}

impl Notifier {
    /// Reads (and removes, so workers do not inherit them) the systemd variables.
    pub fn from_env() -> Notifier {
        let path = std::env::var("NOTIFY_SOCKET").ok();
        let target = path.clone().and_then(|path| {
            let addr = match path.strip_prefix('@') {
                Some(name) => SocketAddr::from_abstract_name(name.as_bytes()).ok()?,
                None => SocketAddr::from_pathname(&path).ok()?,
            };
            Some((UnixDatagram::unbound().ok()?, addr))
        });
        let watchdog = std::env::var("WATCHDOG_USEC")
            .ok()
            .filter(|_| {
                std::env::var("WATCHDOG_PID").map_or(true, |p| p == std::process::id().to_string())
            })
            .and_then(|v| v.parse::<u64>().ok())
            .filter(|us| *us > 0)
            .map(Duration::from_micros);
        for var in ["NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"] {
            // SAFETY of the std API: the master is single-threaded at this point.
            std::env::remove_var(var);
        }
        Notifier {
            target,
            path,
            watchdog,
            last_ping: Instant::now(),
        }
    }

    pub fn socket_path(&self) -> Option<&str> {
        self.path.as_deref()
    }

    /// The variables `from_env` took, for this master re-executed in place (the same
    /// pid: the watchdog goes on).
    pub fn env_for_reexec(&self) -> Vec<(&'static str, String)> {
        let mut env = Vec::new();
        if let Some(path) = &self.path {
            env.push(("NOTIFY_SOCKET", path.clone()));
        }
        if let Some(every) = self.watchdog {
            env.push(("WATCHDOG_USEC", every.as_micros().to_string()));
            env.push(("WATCHDOG_PID", std::process::id().to_string()));
        }
        env
    }

    pub fn send(&self, message: &str) {
        if let Some((sock, addr)) = &self.target {
            if let Err(e) = sock.send_to_addr(message.as_bytes(), addr) {
                tracing::debug!("sd_notify failed: {e}");
            }
        }
    }

    pub fn ready(&self, status: &str) {
        self.send(&format!("READY=1\nSTATUS={status}"));
    }

    pub fn reloading(&self) {
        let usec = crate::scoreboard::monotonic_ms() * 1000;
        self.send(&format!("RELOADING=1\nMONOTONIC_USEC={usec}"));
    }

    pub fn stopping(&self) {
        self.send("STOPPING=1");
    }

    /// Pings the watchdog at half its interval, only while workers are ready.
    pub fn tick(&mut self, workers_ready: usize) {
        let Some(interval) = self.watchdog else {
            return;
        };
        if workers_ready > 0 && self.last_ping.elapsed() >= interval / 2 {
            self.send("WATCHDOG=1");
            self.last_ping = Instant::now();
        }
    }

    /// How soon the loop must wake to ping in time.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.watchdog.map(|i| self.last_ping + i / 2)
    }
}
