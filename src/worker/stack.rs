//! `rgunctl stack`: a live worker's Python stacks, without stopping it. The master
//! sends `STACK_SIGNAL`; the handler only writes a byte to a pipe; a thread of ours
//! wakes, takes the GIL (so the snapshot is consistent, as between two bytecodes of
//! every thread), formats every other thread's stack with source lines
//! (`abort::thread_stacks`, the code the time-out log uses) beside the request each
//! thread runs (`abort::Lanes`), and sends it to the master as one `S<json>\n` line on
//! the worker's pipe. The worker serves on: the threads pause only for as long as the
//! formatting holds the GIL.

use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::Arc;

use pyo3::prelude::*;
use serde_json::{json, Value};

use super::abort::{thread_stacks, InsideRequest};
use super::Shared;

/// The write end of the stack thread's pipe, for the signal handler.
static WAKE_FD: AtomicI32 = AtomicI32::new(-1);

/// The signal that asks a worker for its stacks (faulthandler's dump uses +2).
pub fn stack_signal() -> i32 {
    libc::SIGRTMIN() + 3
}

/// Installs the handler and starts the thread that answers on `to_master`. Call before
/// the worker reports ready: the master signals only ready workers, and the signal's
/// default action would end the process.
pub fn serve(shared: Arc<Shared>, mut to_master: UnixStream) -> std::io::Result<()> {
    let (mut rx, tx) = UnixStream::pair()?;
    tx.set_nonblocking(true)?;
    std::thread::Builder::new()
        .name("rgun-stack".into())
        .spawn(move || {
            let mut bytes = [0u8; 64];
            // Several requests that arrived together get one answer.
            while matches!(rx.read(&mut bytes), Ok(n) if n > 0) {
                let inside = shared.lanes.inside();
                let threads = Python::with_gil(|py| match thread_stacks(py) {
                    Ok(stacks) => Ok(stacks
                        .into_iter()
                        .map(|t| {
                            let request = inside.iter().find(|r| r.thread == t.ident);
                            json!({
                                "ident": t.ident,
                                "name": t.name,
                                "stack": t.stack,
                                "request": request.map(request_json),
                            })
                        })
                        .collect::<Vec<Value>>()),
                    Err(e) => Err(crate::python::format_exception(py, &e)),
                });
                let answer = match threads {
                    Ok(threads) => json!({"pid": std::process::id(), "threads": threads}),
                    Err(error) => json!({"pid": std::process::id(), "error": error}),
                };
                let line = format!("S{answer}\n");
                if to_master.write_all(line.as_bytes()).is_err() {
                    return; // the master is gone
                }
            }
        })?;
    WAKE_FD.store(tx.as_raw_fd(), Ordering::Relaxed);
    // The write end lives as long as the process: the handler may write at any time.
    std::mem::forget(tx);
    // SAFETY: `on_signal` only calls write(2), which is async-signal-safe; the action
    // struct is fully initialised.
    unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = on_signal as *const () as usize;
        action.sa_flags = libc::SA_RESTART;
        libc::sigemptyset(&mut action.sa_mask);
        if libc::sigaction(stack_signal(), &action, std::ptr::null_mut()) != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

extern "C" fn on_signal(_: libc::c_int) {
    let fd = WAKE_FD.load(Ordering::Relaxed);
    // SAFETY: write(2) on our pipe is async-signal-safe; a full pipe just fails (a
    // request is already pending then).
    unsafe { libc::write(fd, [1u8].as_ptr().cast(), 1) };
}

fn request_json(r: &InsideRequest) -> Value {
    let (method, target) = r.what.split_once(' ').unwrap_or((&r.what, ""));
    json!({
        "method": method,
        "path": target,
        "client": r.client,
        "age_s": (r.age.as_secs_f64() * 1000.0).round() / 1000.0,
    })
}
