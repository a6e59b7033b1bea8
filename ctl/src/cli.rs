//! The `rgunctl` command line: operate a running rgun through its control socket. The
//! `rgunctl` binary (`main.rs`) and the Python package's `rgunctl` console script both
//! call [`run`] with their arguments.
//!
//! Exit status: 0 ok, 1 the daemon answered with an error, 2 usage, 3 cannot connect,
//! 4 the daemon was busy (the action was not attempted; try again — never a failure of
//! the action itself, so a deploy script does not roll back on it).

mod human;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use crate::protocol::{ErrorBody, ErrorCode};
use crate::socket_path::find_default_socket;
use crate::{Client, ClientError};
use clap::{CommandFactory, Parser, Subcommand};
use serde_json::{json, Map, Value};

use human::print_human;

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
    let mut client = match connect(&cli, &path, waits) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let outcome = client.call(cmd, args);
    answer(&cli, cmd, &mut client, outcome)
}

/// A client of the socket at `path`, with the time limit `--timeout` asks for (by
/// default 10 s, none for a command that `waits` for its outcome); exit status 3 when
/// the socket cannot be reached.
fn connect(cli: &Cli, path: &Path, waits: bool) -> Result<Client, ExitCode> {
    let timeout = match cli.timeout {
        Some(s) if s > 0.0 => Some(Duration::from_secs_f64(s)),
        Some(_) => None,
        None if waits => None,
        None => Some(Duration::from_secs(10)),
    };
    Client::connect(path, timeout).map_err(|e| {
        eprintln!("rgunctl: {e}");
        if cli.socket.is_some() {
            eprintln!(
                "rgunctl: that path came from -s or RGUN_CONTROL_SOCKET; rgun logs its socket at start-up (\"Control socket: PATH\")"
            );
        }
        ExitCode::from(3)
    })
}

/// Prints the daemon's answer to `cmd` (or follows `watch`'s events) and says the exit
/// status: 0 done, 1 refused or failed, 3 the connection failed, 4 busy.
fn answer(
    cli: &Cli,
    cmd: &str,
    client: &mut Client,
    outcome: Result<Result<Value, ErrorBody>, ClientError>,
) -> ExitCode {
    match outcome {
        Ok(Ok(result)) if matches!(cli.command, Cmd::Watch) => {
            crate::watch::follow(client, &result, cli.json)
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
