//! The full-screen loop: a `status` every interval on the main connection, events
//! from a `watch` connection read by a thread, keys from the terminal, and actions
//! (scale, reload, stack) each on a connection of its own in a thread, so a reload
//! that takes a minute never freezes the screen. The terminal is restored however
//! the loop ends.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::time::{Duration, Instant};

use crossterm::event::{self, Event, KeyCode, KeyEventKind, KeyModifiers};
use serde_json::{json, Map, Value};

use super::frame::{Frame, Sample};
use super::inflight::{from_stack, Requests};
use super::screen::{self, Overlay, View};
use super::text::COLUMNS;
use super::{take_sample, TopError};
use crate::client::Client;

/// What the background threads report.
enum Update {
    Event(String),
    /// What `pid`'s long request that began at `began` is (see `inflight`).
    Request {
        pid: i32,
        began: f64,
        what: String,
    },
    Message(String),
    Overlay {
        title: String,
        text: String,
    },
}

const EVENTS_KEPT: usize = 200;

pub fn run(path: &Path, client: &mut Client, delay: Duration) -> Result<(), TopError> {
    let (tx, rx) = channel();
    follow_events(path.to_owned(), tx.clone());
    let mut terminal = ratatui::try_init()?;
    let result = run_loop(&mut terminal, path, client, delay, &tx, &rx);
    ratatui::restore();
    result
}

fn run_loop(
    terminal: &mut ratatui::DefaultTerminal,
    path: &Path,
    client: &mut Client,
    delay: Duration,
    tx: &Sender<Update>,
    rx: &Receiver<Update>,
) -> Result<(), TopError> {
    let clock = Instant::now();
    let mut view = View {
        frame: None,
        sort: super::text::Column::Pid,
        reverse: false,
        selected_pid: None,
        events: VecDeque::new(),
        message: String::new(),
        overlay: None,
    };
    let mut prev: Option<Sample> = None;
    let mut next_sample = Instant::now();
    let mut requests = Requests::default();
    loop {
        if Instant::now() >= next_sample {
            let now = take_sample(client, clock)?;
            let mut frame = Frame::new(prev.as_ref(), &now);
            for (pid, began) in requests.new_long_requests(&frame, now.at_s) {
                ask_request(path, tx, pid, began);
            }
            describe_requests(&mut frame, &requests);
            view.frame = Some(frame);
            prev = Some(now);
            next_sample = Instant::now() + delay;
            keep_selection(&mut view);
        }
        while let Ok(update) = rx.try_recv() {
            if let Update::Request { pid, began, what } = update {
                requests.answer(pid, began, what);
                if let Some(frame) = view.frame.as_mut() {
                    describe_requests(frame, &requests);
                }
            } else if apply(&mut view, update) {
                next_sample = Instant::now(); // show what the action changed at once
            }
        }
        terminal.draw(|canvas| screen::draw(canvas, &view))?;
        let wait = next_sample
            .saturating_duration_since(Instant::now())
            .min(Duration::from_millis(100));
        if event::poll(wait)? {
            if let Event::Key(key) = event::read()? {
                if key.kind != KeyEventKind::Press {
                    continue;
                }
                let ctrl_c =
                    key.code == KeyCode::Char('c') && key.modifiers.contains(KeyModifiers::CONTROL);
                if ctrl_c || !handle_key(&mut view, key.code, path, tx) {
                    return Ok(());
                }
            }
        }
    }
}

fn describe_requests(frame: &mut Frame, requests: &Requests) {
    for row in &mut frame.workers {
        row.request = requests.describe(row.pid).map(str::to_owned);
    }
}

/// Asks `pid` for its stacks, to learn what its long request is.
fn ask_request(path: &Path, tx: &Sender<Update>, pid: i32, began: f64) {
    act(path, tx, "stack", json!({"pid": pid}), move |r| {
        let what = r.ok().and_then(|v| from_stack(&v)).unwrap_or_default();
        Update::Request { pid, began, what }
    });
}

/// Shows what a thread reported; true for an action's outcome.
fn apply(view: &mut View, update: Update) -> bool {
    match update {
        Update::Request { .. } => return false,
        Update::Event(line) => {
            view.events.push_back(line);
            if view.events.len() > EVENTS_KEPT {
                view.events.pop_front();
            }
            return false;
        }
        Update::Message(m) => view.message = m,
        Update::Overlay { title, text } => {
            view.message = title.clone();
            view.overlay = Some(Overlay {
                title,
                text,
                scroll: 0,
            })
        }
    }
    true
}

/// A key; false to quit.
fn handle_key(view: &mut View, key: KeyCode, path: &Path, tx: &Sender<Update>) -> bool {
    if let Some(o) = view.overlay.as_mut() {
        match key {
            KeyCode::Esc | KeyCode::Char('q') => view.overlay = None,
            KeyCode::Up | KeyCode::Char('k') => o.scroll = o.scroll.saturating_sub(1),
            KeyCode::Down | KeyCode::Char('j') => o.scroll = o.scroll.saturating_add(1),
            KeyCode::PageUp => o.scroll = o.scroll.saturating_sub(10),
            KeyCode::PageDown => o.scroll = o.scroll.saturating_add(10),
            _ => {}
        }
        return true;
    }
    match key {
        KeyCode::Char('q') | KeyCode::Esc => return false,
        KeyCode::Char('+') => scale(view, path, tx, 1),
        KeyCode::Char('-') => scale(view, path, tx, -1),
        KeyCode::Char('r') => {
            view.message = "reloading...".into();
            act(path, tx, "reload", json!({"wait": true}), describe_reload);
        }
        KeyCode::Char('s') => match view.selected_pid {
            Some(pid) => {
                view.message = format!("asking worker {pid} for its stacks...");
                act(path, tx, "stack", json!({"pid": pid}), move |r| match r {
                    Ok(v) => {
                        let mut text = String::new();
                        crate::stacks::print_stacks(&mut text, &v);
                        Update::Overlay {
                            title: format!("stacks of worker {pid}"),
                            text,
                        }
                    }
                    Err(e) => Update::Message(format!("stack {pid} failed: {e}")),
                });
            }
            None => view.message = "select a worker first (up/down)".into(),
        },
        KeyCode::Up | KeyCode::Char('k') => move_selection(view, -1),
        KeyCode::Down | KeyCode::Char('j') => move_selection(view, 1),
        KeyCode::Char('<') | KeyCode::Left => shift_sort(view, -1),
        KeyCode::Char('>') | KeyCode::Right => shift_sort(view, 1),
        KeyCode::Char('i') => view.reverse = !view.reverse,
        _ => {}
    }
    true
}

fn scale(view: &mut View, path: &Path, tx: &Sender<Update>, delta: i64) {
    view.message = format!("scale {delta:+}...");
    act(path, tx, "scale", json!({"delta": delta}), |r| {
        Update::Message(match r {
            Ok(v) => format!("workers: {} -> {}", v["previous"], v["target"]),
            Err(e) => format!("scale failed: {e}"),
        })
    });
}

/// A reload's outcome: a line when it worked, the whole error (with the Python
/// traceback) in a pane when it did not.
fn describe_reload(r: Result<Value, String>) -> Update {
    match r {
        Ok(v) => Update::Message(format!(
            "reloaded: generation {} -> {} in {} ms",
            v["previous_generation"], v["generation"], v["duration_ms"]
        )),
        Err(e) => Update::Overlay {
            title: "reload failed".into(),
            text: e,
        },
    }
}

/// Sends `cmd` on a connection of its own in a thread; `report` turns the answer
/// (or the error's message) into what the screen shows.
fn act(
    path: &Path,
    tx: &Sender<Update>,
    cmd: &'static str,
    args: Value,
    report: impl FnOnce(Result<Value, String>) -> Update + Send + 'static,
) {
    let (path, tx) = (path.to_owned(), tx.clone());
    let args: Map<String, Value> = match args {
        Value::Object(m) => m,
        _ => Map::new(),
    };
    std::thread::spawn(move || {
        let answer = Client::connect(&path, None)
            .and_then(|mut c| c.call(cmd, args))
            .map_err(|e| e.to_string())
            .and_then(|r| r.map_err(|e| e.message));
        let _ = tx.send(report(answer));
    });
}

/// The `watch` subscription's events, as sentences, until the daemon closes it.
fn follow_events(path: PathBuf, tx: Sender<Update>) {
    std::thread::spawn(move || {
        let Ok(mut client) = Client::connect(&path, None) else {
            return;
        };
        let Ok(Ok(subscribed)) = client.call("watch", Map::new()) else {
            return;
        };
        let first = crate::watch::describe(&crate::watch::watching(&subscribed));
        if tx.send(Update::Event(first)).is_err() {
            return;
        }
        while let Ok(Some(event)) = client.next_event() {
            if tx
                .send(Update::Event(crate::watch::describe(&event)))
                .is_err()
            {
                return;
            }
        }
        let _ = tx.send(Update::Event("the daemon closed the event stream".into()));
    });
}

fn move_selection(view: &mut View, step: isize) {
    let rows = screen::rows(view);
    if rows.is_empty() {
        return;
    }
    let at = view
        .selected_pid
        .and_then(|pid| rows.iter().position(|r| r.pid == pid));
    let next = match at {
        None => 0,
        Some(i) => (i as isize + step).clamp(0, rows.len() as isize - 1) as usize,
    };
    view.selected_pid = Some(rows[next].pid);
}

/// After a refresh: a selected worker that has gone gives way to the first row.
fn keep_selection(view: &mut View) {
    let rows = screen::rows(view);
    if !rows.iter().any(|r| Some(r.pid) == view.selected_pid) {
        view.selected_pid = rows.first().map(|r| r.pid);
    }
}

fn shift_sort(view: &mut View, step: isize) {
    let at = COLUMNS.iter().position(|&c| c == view.sort).unwrap_or(0) as isize;
    let n = COLUMNS.len() as isize;
    view.sort = COLUMNS[((at + step).rem_euclid(n)) as usize];
}
