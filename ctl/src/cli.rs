//! The `rgunctl` command line: operate a running rgun through its control socket. The
//! `rgunctl` binary (`main.rs`) and the Python package's `rgunctl` console script both
//! call [`run`] with their arguments.
//!
//! Exit status: 0 ok, 1 the daemon answered with an error, 2 usage, 3 cannot connect,
//! 4 the daemon was busy (the action was not attempted; try again — never a failure of
//! the action itself, so a deploy script does not roll back on it).

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use crate::clock::format_time;
use crate::protocol::{DirtyStatus, ErrorCode, HistoryEntry, MasterStatus, Status};
use crate::socket_path::find_default_socket;
use crate::stacks::print_stacks;
use crate::{Client, ClientError};
use clap::{CommandFactory, Parser, Subcommand};
use serde_json::{json, Map, Value};

/// `writeln!` into the output being assembled (a `String`, which cannot fail).
macro_rules! w {
    ($out:expr, $($arg:tt)*) => {{
        use std::fmt::Write as _;
        let _ = writeln!($out, $($arg)*);
    }};
}

/// The global flags (`-s`, `--json`, `--timeout`) go before or after the command:
/// `rgunctl --json status` and `rgunctl status --json` are the same.
#[derive(Parser)]
#[command(
    name = "rgunctl",
    version,
    about = "Operate a running rgun through its control socket"
)]
struct Cli {
    /// Control socket [default: $RGUN_CONTROL_SOCKET, else $RUNTIME_DIRECTORY/rgun.ctl
    /// under systemd, else the one running rgun's socket in $XDG_RUNTIME_DIR/rgun/ (or
    /// /tmp/rgun-UID/)]
    #[arg(
        short = 's',
        long = "socket",
        value_name = "PATH",
        env = "RGUN_CONTROL_SOCKET",
        global = true
    )]
    socket: Option<PathBuf>,
    /// Print the raw JSON result.
    #[arg(long, global = true)]
    json: bool,
    /// Give up after this many seconds [default: 10, none for reload and scale --wait]
    #[arg(long, value_name = "SECONDS", global = true)]
    timeout: Option<f64>,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Master and per-worker state.
    Status,
    /// Set the number of workers: N, +N or -N (with autoscaling, this pins the count),
    /// or auto: autoscaling decides again.
    Scale {
        #[arg(allow_hyphen_values = true, value_name = "N|+N|-N|auto")]
        count: String,
        /// Return once that many workers are ready.
        #[arg(long)]
        wait: bool,
        /// Scale the dirty pool's workers instead (--dirty-workers).
        #[arg(long)]
        dirty: bool,
    },
    /// Rolling reload: boot a new generation, then retire the old one.
    Reload {
        /// Return at once instead of waiting for the outcome.
        #[arg(long)]
        no_wait: bool,
    },
    /// Stop the daemon (graceful unless --quick).
    Stop {
        #[arg(long)]
        quick: bool,
    },
    /// Reopen the log files (after rotation).
    ReopenLogs,
    /// The effective settings.
    Config,
    /// Gracefully stop one worker; the master replaces it.
    Kill { pid: i32 },
    /// The last reloads and scale changes.
    History,
    /// Check that the daemon answers.
    Ping,
    /// Prometheus metrics (the text `--metrics-bind` serves at /metrics).
    Metrics,
    /// Every thread's Python stack of a live worker, with the request each serves
    /// (the worker keeps serving).
    Stack {
        /// The worker's pid.
        #[arg(required_unless_present = "all", conflicts_with = "all")]
        pid: Option<i32>,
        /// Every ready worker.
        #[arg(long)]
        all: bool,
    },
    /// A live full-screen view: workers, rates, latency, events; keys scale, reload
    /// and show a worker's stacks. Plain frames with --batch/--once or into a pipe.
    Top(crate::top::TopArgs),
    /// Print events as they happen (workers, reloads, scaling, log reopens) until the
    /// daemon stops; JSON lines with --json.
    Watch,
    /// Print shell completions or the man page (for packaging).
    #[command(hide = true)]
    Generate {
        /// `man`, or a shell: bash, zsh, fish, elvish, powershell
        what: String,
    },
}

/// Runs `rgunctl` with these arguments (the first is the program name).
pub fn run<I, T>(args: I) -> ExitCode
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    let cli = match Cli::try_parse_from(args) {
        Ok(cli) => cli,
        Err(e) => {
            let code = if e.use_stderr() { 2 } else { 0 };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    if let Cmd::Generate { what } = &cli.command {
        return generate(what);
    }
    let path = match socket(&cli) {
        Ok(p) => p,
        Err(code) => return code,
    };
    if let Cmd::Top(args) = &cli.command {
        let timeout = cli
            .timeout
            .filter(|s| *s > 0.0)
            .map(Duration::from_secs_f64);
        return crate::top::run(&path, timeout, cli.json, args);
    }
    let (cmd, args, waits) = request_for(&cli.command);
    let args = match args {
        Ok(a) => a,
        Err(msg) => {
            eprintln!("rgunctl: {msg}");
            return ExitCode::from(2);
        }
    };
    let timeout = match cli.timeout {
        Some(s) if s > 0.0 => Some(Duration::from_secs_f64(s)),
        Some(_) => None,
        None if waits => None,
        None => Some(Duration::from_secs(10)),
    };
    let mut client = match Client::connect(&path, timeout) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("rgunctl: {e}");
            if cli.socket.is_some() {
                eprintln!(
                    "rgunctl: that path came from -s or RGUN_CONTROL_SOCKET; rgun logs its socket at start-up (\"Control socket: PATH\")"
                );
            }
            return ExitCode::from(3);
        }
    };
    match client.call(cmd, args) {
        Ok(Ok(result)) if matches!(cli.command, Cmd::Watch) => {
            crate::watch::follow(&mut client, &result, cli.json)
        }
        Ok(Ok(result)) => {
            let mut out = String::new();
            if cli.json {
                w!(
                    out,
                    "{}",
                    serde_json::to_string_pretty(&result).unwrap_or_default()
                );
            } else {
                print_human(&mut out, &cli.command, &result);
            }
            emit(out.as_bytes())
        }
        Ok(Err(error)) => {
            eprintln!(
                "rgunctl: {} failed ({}): {}",
                cmd,
                serde_json::to_value(error.code)
                    .unwrap_or_default()
                    .as_str()
                    .unwrap_or(""),
                error.message
            );
            ExitCode::from(if error.code == ErrorCode::Busy { 4 } else { 1 })
        }
        Err(e @ ClientError::Connect { .. }) => {
            eprintln!("rgunctl: {e}");
            ExitCode::from(3)
        }
        Err(e) => {
            eprintln!("rgunctl: {e}");
            ExitCode::from(1)
        }
    }
}

/// The socket to talk to: `-s`/`RGUN_CONTROL_SOCKET`, else the default one; when there
/// is none to be found, says where it looked (exit status 3).
fn socket(cli: &Cli) -> Result<PathBuf, ExitCode> {
    match &cli.socket {
        Some(path) => Ok(path.clone()),
        None => find_default_socket().map_err(|msg| {
            eprintln!("rgunctl: {msg}");
            ExitCode::from(3)
        }),
    }
}

/// The protocol command, its arguments, and whether it waits for an outcome.
fn request_for(cmd: &Cmd) -> (&'static str, Result<Map<String, Value>, String>, bool) {
    let obj = |v: Value| match v {
        Value::Object(m) => m,
        _ => Map::new(),
    };
    match cmd {
        Cmd::Status => ("status", Ok(Map::new()), false),
        Cmd::Scale { count, wait, dirty } => {
            let args = parse_scale(count).map(|(key, n)| {
                let mut m = Map::new();
                m.insert(key.into(), n);
                m.insert("wait".into(), json!(wait));
                if *dirty {
                    m.insert("pool".into(), json!("dirty"));
                }
                m
            });
            ("scale", args, *wait)
        }
        Cmd::Reload { no_wait } => ("reload", Ok(obj(json!({"wait": !no_wait}))), !no_wait),
        Cmd::Stop { quick } => (
            "stop",
            Ok(obj(
                json!({"mode": if *quick { "quick" } else { "graceful" }}),
            )),
            false,
        ),
        Cmd::ReopenLogs => ("reopen_logs", Ok(Map::new()), false),
        Cmd::Config => ("config", Ok(Map::new()), false),
        Cmd::Kill { pid } => ("kill", Ok(obj(json!({"pid": pid}))), false),
        Cmd::History => ("history", Ok(Map::new()), false),
        Cmd::Ping => ("ping", Ok(Map::new()), false),
        Cmd::Metrics => ("metrics", Ok(Map::new()), false),
        Cmd::Watch => ("watch", Ok(Map::new()), true),
        Cmd::Stack { pid, all } => {
            let args = match (pid, all) {
                (_, true) => json!({"all": true}),
                (Some(p), false) => json!({"pid": p}),
                (None, false) => json!({}),
            };
            ("stack", Ok(obj(args)), false)
        }
        Cmd::Generate { .. } | Cmd::Top(_) => unreachable!("handled before"),
    }
}

/// `8` → workers 8; `+2`/`-1` → delta; `auto` → autoscaling resumes.
fn parse_scale(count: &str) -> Result<(&'static str, Value), String> {
    if count == "auto" {
        return Ok(("auto", json!(true)));
    }
    let relative = count.starts_with('+') || count.starts_with('-');
    let n: i64 = count
        .parse()
        .map_err(|_| format!("scale: {count:?} is not N, +N or -N"))?;
    if relative {
        if n == 0 {
            return Err("scale: a change of 0 does nothing".into());
        }
        Ok(("delta", json!(n)))
    } else if n < 1 {
        Err("scale: the number of workers must be at least 1".into())
    } else {
        Ok(("workers", json!(n)))
    }
}

fn print_human(out: &mut String, cmd: &Cmd, result: &Value) {
    match cmd {
        Cmd::Status => match serde_json::from_value::<Status>(result.clone()) {
            Ok(status) => print_status(out, &status),
            Err(_) => w!(out, "{result}"),
        },
        Cmd::History => match serde_json::from_value::<Vec<HistoryEntry>>(
            result.get("entries").cloned().unwrap_or_default(),
        ) {
            Ok(entries) if entries.is_empty() => w!(out, "no reloads or scale changes yet"),
            Ok(entries) => {
                w!(
                    out,
                    "{:<20} {:<7} {:<16} {:>9} {:<8} DETAIL",
                    "STARTED",
                    "ACTION",
                    "TRIGGER",
                    "DURATION",
                    "OUTCOME"
                );
                for e in entries {
                    let dur = e.duration_ms.map_or("-".into(), |d| format!("{d}ms"));
                    let detail = e
                        .error
                        .clone()
                        .map(|s| s.lines().last().unwrap_or("").to_owned())
                        .unwrap_or_else(|| e.detail.to_string());
                    w!(
                        out,
                        "{:<20} {:<7} {:<16} {:>9} {:<8} {}",
                        format_time(e.started_at),
                        e.action,
                        e.trigger,
                        dur,
                        e.outcome,
                        detail
                    );
                }
            }
            Err(_) => w!(out, "{result}"),
        },
        Cmd::Scale { count, .. } if count == "auto" => w!(
            out,
            "autoscaling resumed between {} and {} workers (target {})",
            result["workers_min"],
            result["workers_max"],
            result["target"]
        ),
        Cmd::Scale { .. } if result["autoscale"] == json!("paused") => w!(
            out,
            "workers: {} -> {} (autoscaling paused until `rgunctl scale auto`)",
            result["previous"],
            result["target"]
        ),
        Cmd::Scale { .. } => w!(
            out,
            "workers: {} -> {}",
            result["previous"],
            result["target"]
        ),
        Cmd::Reload { .. } if result["queued"] == json!(true) => {
            match result.get("handed_to_master") {
                Some(pid) => w!(
                    out,
                    "reload handed to the new master {pid}, which loads the code as it is now"
                ),
                None => w!(
                out,
                "reload queued: it starts when the one in progress ends (generation {} serving)",
                result["serving_generation"]
            ),
            }
        }
        Cmd::Reload { no_wait: false } => w!(
            out,
            "reloaded: generation {} -> {} in {} ms",
            result["previous_generation"],
            result["generation"],
            result["duration_ms"]
        ),
        Cmd::Reload { no_wait: true } => {
            w!(out, "reload started (generation {})", result["generation"])
        }
        Cmd::Ping => w!(
            out,
            "pong: rgun {} (pid {})",
            result["version"].as_str().unwrap_or("?"),
            result["pid"]
        ),
        Cmd::Config => w!(
            out,
            "{}",
            serde_json::to_string_pretty(result).unwrap_or_default()
        ),
        Cmd::Stop { .. } => match result["mode"].as_str() {
            Some("graceful") => w!(
                out,
                "stopping rgun (pid {}): {} workers finish the requests in flight within {} s",
                result["pid"],
                result["workers"],
                result["deadline_s"]
            ),
            _ => w!(
                out,
                "stopping rgun (pid {}) quickly: {} workers end what they are doing",
                result["pid"],
                result["workers"]
            ),
        },
        Cmd::ReopenLogs => w!(out, "logs reopened"),
        Cmd::Kill { pid } => w!(out, "worker {pid} is stopping"),
        Cmd::Metrics => out.push_str(result["text"].as_str().unwrap_or_default()),
        Cmd::Watch | Cmd::Top(_) => {}
        Cmd::Stack { pid: Some(_), .. } => print_stacks(out, result),
        Cmd::Stack { .. } => {
            for worker in result["workers"].as_array().into_iter().flatten() {
                print_stacks(out, worker);
            }
        }
        Cmd::Generate { .. } => {}
    }
}

/// Autoscaling's line in `status`: bounds, target, and the last decision.
fn print_autoscale(out: &mut String, m: &MasterStatus) {
    let (Some(state), Some(floor), Some(ceiling)) = (&m.autoscale, m.workers_min, m.workers_max)
    else {
        return;
    };
    let last = match &m.last_decision {
        Some(d) => format!(
            "; last {} {} -> {} at {}: {}",
            d.direction,
            d.from,
            d.to,
            format_time(d.time),
            d.reason
        ),
        None => "; no decision yet".into(),
    };
    w!(
        out,
        "autoscale {state}  floor {floor}  ceiling {ceiling}  target {}{last}",
        m.workers_target
    );
}

fn print_status(out: &mut String, s: &Status) {
    let m = &s.master;
    let ready = s
        .workers
        .iter()
        .filter(|w| w.generation == m.generation && (w.state == "idle" || w.state == "busy"))
        .count();
    w!(
        out,
        "master {}  rgun {}  {}  state {}  generation {}  workers {}/{}  up {}",
        m.pid,
        m.version,
        m.app,
        m.state,
        m.generation,
        ready,
        m.workers_target,
        format_age(m.uptime_s)
    );
    w!(out, "binds  {}", m.binds.join(" "));
    print_autoscale(out, m);
    if let Some(a) = &m.accept_failing {
        w!(
            out,
            "ACCEPT FAILING for {}: {} ({} failed accepts)",
            format_age(a.since_s),
            a.error,
            a.failures
        );
    }
    w!(
        out,
        "{:<8} {:>4} {:<9} {:>8} {:>9} {:>5} {:>8} {:>9} {:>10}",
        "PID",
        "GEN",
        "STATE",
        "AGE",
        "REQUESTS",
        "CONNS",
        "CURRENT",
        "HEARTBEAT",
        "RSS"
    );
    for w in &s.workers {
        w!(
            out,
            "{:<8} {:>4} {:<9} {:>8} {:>9} {:>5} {:>8} {:>9} {:>10}",
            w.pid,
            w.generation,
            w.state,
            format_age(w.age_s),
            w.requests,
            w.connections,
            w.current_request_s
                .map_or("-".into(), |c| format!("{c:.1}s")),
            format!("{:.1}s", w.last_heartbeat_s),
            format!("{:.1} MiB", w.rss_bytes as f64 / 1048576.0)
        );
    }
    if let Some(d) = &s.dirty {
        print_dirty(out, d);
    }
    let t = &s.totals;
    w!(
        out,
        "totals requests {}  spawned {}  exited {}  timeouts {}  reloads {}  accept errors {}",
        t.requests,
        t.workers_spawned,
        t.workers_exited,
        t.timeouts,
        t.reloads,
        t.accept_errors
    );
}

/// The dirty pool's rows: each worker and the apps it holds.
fn print_dirty(out: &mut String, d: &DirtyStatus) {
    let ready = d.workers.iter().filter(|w| w.state == "ready").count();
    let calls = |k: &str| d.calls.get(k).and_then(Value::as_u64).unwrap_or(0);
    w!(
        out,
        "dirty  router {}  workers {}/{}  calls {}  errors {}  timeouts {}  queued {}  socket {}",
        d.router_pid.map_or("-".into(), |p| p.to_string()),
        ready,
        d.target,
        calls("calls"),
        calls("errors"),
        calls("timeouts"),
        calls("queued"),
        d.socket
    );
    w!(
        out,
        "{:<8} {:>4} {:<9} {:>8} {:>9} {:>10}  APPS",
        "DIRTY",
        "GEN",
        "STATE",
        "AGE",
        "HEARTBEAT",
        "RSS"
    );
    for w in &d.workers {
        w!(
            out,
            "{:<8} {:>4} {:<9} {:>8} {:>9} {:>10}  {}",
            w.pid,
            w.generation,
            w.state,
            format_age(w.age_s),
            format!("{:.1}s", w.last_heartbeat_s),
            format!("{:.1} MiB", w.rss_bytes as f64 / 1048576.0),
            w.apps.join(" ")
        );
    }
}

fn format_age(secs: f64) -> String {
    let s = secs as u64;
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m{:02}s", s / 60, s % 60),
        _ => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
    }
}

fn generate(what: &str) -> ExitCode {
    let mut cmd = Cli::command();
    if what == "man" {
        let mut page = Vec::new();
        return match clap_mangen::Man::new(cmd).render(&mut page) {
            Ok(()) => emit(&page),
            Err(e) => {
                eprintln!("rgunctl: {e}");
                ExitCode::from(1)
            }
        };
    }
    match what.parse::<clap_complete::Shell>() {
        Ok(shell) => {
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut cmd, "rgunctl", &mut script);
            emit(&script)
        }
        Err(_) => {
            eprintln!("rgunctl: generate: expected man or a shell name, got {what:?}");
            ExitCode::from(2)
        }
    }
}

/// Writes the output; a reader that went away (`rgunctl status | head -1`) is not an
/// error, so that ends quietly with success, as for other Unix filters.
fn emit(bytes: &[u8]) -> ExitCode {
    let mut stdout = std::io::stdout().lock();
    match stdout.write_all(bytes).and_then(|()| stdout.flush()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("rgunctl: cannot write the output: {e}");
            ExitCode::from(1)
        }
    }
}
