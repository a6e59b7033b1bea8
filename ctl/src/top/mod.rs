//! `rgunctl top`: a live view of a running rgun, refreshed from one `status` a
//! second (the master's cost of a `status`, nothing more) plus a `watch` subscription
//! for the event pane. Full-screen (ratatui over crossterm) when stdout is a terminal;
//! otherwise, or with `--batch`/`--once`, plain frames (JSON lines with `--json`).
//!
//! `frame` computes the figures from two answers, `text` turns them into lines and
//! cells, `screen` lays them out, `interactive` runs the keys and the actions,
//! `inflight` asks a worker what its long request is.

mod frame;
mod inflight;
mod interactive;
mod screen;
mod text;

use std::io::{IsTerminal, Write};
use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use serde_json::{Map, Value};

use crate::client::{Client, ClientError};
use frame::{Frame, Sample};

/// `rgunctl top`'s own flags.
#[derive(clap::Args, Debug, Clone)]
pub struct TopArgs {
    /// Print frames as text instead of the full-screen view (the default when stdout
    /// is not a terminal); JSON lines with --json.
    #[arg(long, short = 'b')]
    pub batch: bool,
    /// Print one frame (rates over one interval) and exit.
    #[arg(long)]
    pub once: bool,
    /// Seconds between refreshes.
    #[arg(long, short = 'd', value_name = "SECONDS", default_value_t = 1.0)]
    pub delay: f64,
    /// With --batch: stop after this many frames.
    #[arg(long, short = 'n', value_name = "N")]
    pub iterations: Option<u64>,
}

/// Runs `top` against the daemon at `path`.
pub fn run(path: &Path, timeout: Option<Duration>, json: bool, args: &TopArgs) -> ExitCode {
    if !(0.1..=3600.0).contains(&args.delay) {
        eprintln!("rgunctl: top: --delay must be from 0.1 to 3600 seconds");
        return ExitCode::from(2);
    }
    let delay = Duration::from_secs_f64(args.delay);
    // `status` always has a limit: a daemon that stops answering must not freeze top.
    let timeout = timeout.or(Some(Duration::from_secs(10)));
    let mut client = match Client::connect(path, timeout) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("rgunctl: {e}");
            return ExitCode::from(3);
        }
    };
    let interactive = !(args.batch || args.once || json) && std::io::stdout().is_terminal();
    let outcome = if interactive {
        interactive::run(path, &mut client, delay)
    } else {
        let frames = if args.once { Some(1) } else { args.iterations };
        batch(&mut client, delay, frames, json)
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(TopError::Output(e)) if e.kind() == std::io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("rgunctl: top: {e}");
            ExitCode::from(1)
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TopError {
    #[error("{0}")]
    Client(#[from] ClientError),
    #[error("status failed: {0}")]
    Status(String),
    #[error("cannot write the output: {0}")]
    Output(#[from] std::io::Error),
}

/// Asks for `status` and notes when.
fn take_sample(client: &mut Client, clock: Instant) -> Result<Sample, TopError> {
    let answer = client
        .call("status", Map::new())?
        .map_err(|e| TopError::Status(e.message))?;
    let status = serde_json::from_value(answer.clone())
        .map_err(|e| TopError::Status(format!("unexpected answer: {e}")))?;
    Ok(Sample {
        at_s: clock.elapsed().as_secs_f64(),
        status,
        master: answer.get("master").cloned().unwrap_or(Value::Null),
    })
}

/// `--batch`/`--once`: a frame per interval, the first after one interval (so it
/// has rates), until `frames` are printed or forever.
fn batch(
    client: &mut Client,
    delay: Duration,
    frames: Option<u64>,
    json: bool,
) -> Result<(), TopError> {
    let clock = Instant::now();
    let mut prev = take_sample(client, clock)?;
    let mut printed = 0;
    while frames.is_none_or(|n| printed < n) {
        std::thread::sleep(delay);
        let now = take_sample(client, clock)?;
        let frame = Frame::new(Some(&prev), &now);
        let mut out = std::io::stdout().lock();
        if json {
            let line = serde_json::to_string(&frame).unwrap_or_default();
            writeln!(out, "{line}")?;
        } else {
            writeln!(out, "{}", text::plain(&frame, text::Column::Pid))?;
        }
        out.flush()?;
        printed += 1;
        prev = now;
    }
    Ok(())
}
