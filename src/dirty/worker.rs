//! A dirty worker process: forked by the master, it loads the dirty applications its
//! index holds (`worker.py`), tells the master it is ready (`R` and the apps, on its
//! pipe) and the router which apps it holds (a hello frame), then runs the calls the
//! router sends on `--dirty-threads` threads. Its I/O thread never takes the GIL: it
//! reads calls, sends the master a heartbeat each second, and handles signals —
//! TERM drains (the router is told, sends nothing more, and closes the link once the
//! calls in flight are answered), INT/QUIT end at once, ABRT (a call's time-out) logs
//! every thread's Python stack and ends.

use std::io::{Read, Write};
use std::os::fd::{AsRawFd, IntoRawFd};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList, PyModule, PyTuple};

use super::frame::{self, Frame, Frames, Kind};
use super::pyvalue;
use super::tlv::Value;
use super::{BYE_ID, HELLO_ID};
use crate::config::Config;
use crate::signals::SignalPipe;
use crate::worker::{exit, leave_master, own_signals};

const WORKER_PY: &str = include_str!("worker.py");
/// How often the I/O thread tells the master it is alive.
pub const HEARTBEAT: Duration = Duration::from_secs(1);
/// How long the abort path waits for the GIL to format Python stacks.
const GIL_WAIT: Duration = Duration::from_millis(800);

/// What a dirty worker gets from the master at fork.
pub struct DirtyInit<'a> {
    pub cfg: &'a Config,
    /// Its place in the pool (0-based): which apps it holds.
    pub index: usize,
    pub age: u64,
    pub to_master: UnixStream,
    pub to_router: UnixStream,
    pub master_signals: Vec<signal_hook::SigId>,
    pub signals: Option<crate::python::BlockedSignals>,
    pub identity: &'a crate::process::Identity,
    pub master_pid: nix::unistd::Pid,
}

/// The dirty worker's main: never returns.
pub fn run(init: DirtyInit<'_>) -> ! {
    let code = match boot_and_serve(init) {
        Ok(()) => 0,
        Err(code) => code,
    };
    std::process::exit(code);
}

/// The applications and their call runner, once booted.
struct Loaded {
    calls: Py<PyAny>,
    apps: Py<PyAny>,
    paths: Vec<String>,
}

fn boot_and_serve(mut init: DirtyInit<'_>) -> Result<(), i32> {
    let signals = take_over_process(&mut init)?;
    let loaded = Python::with_gil(|py| load(py, &init)).map_err(|e| {
        let text = Python::with_gil(|py| crate::python::format_exception(py, &e));
        boot_failure(
            &mut init.to_master,
            &format!("Exception in dirty worker process\n{text}"),
        )
    })?;
    let hello = Value::dict([(
        "apps",
        Value::List(loaded.paths.iter().map(Value::str).collect()),
    )]);
    let ready = serde_json::json!({ "apps": loaded.paths });
    let told = init
        .to_router
        .write_all(&frame::encode_value(Kind::Status, HELLO_ID, &hello))
        .and_then(|()| init.to_master.write_all(format!("R{ready}\n").as_bytes()));
    if told.is_err() {
        return Err(exit::BOOT_ERROR);
    }
    tracing::info!(
        "Dirty worker {} holds {}",
        std::process::id(),
        loaded.paths.join(", ")
    );
    serve(&mut init, signals, &loaded);
    Python::with_gil(|py| {
        let module = worker_module(py)?;
        module
            .getattr("close_apps")?
            .call1((loaded.apps.bind(py),))?;
        Ok::<_, PyErr>(())
    })
    .map_err(|_| 1)?;
    tracing::info!("Dirty worker exiting (pid: {})", std::process::id());
    Ok(())
}

/// Leaving the master (`worker::leave_master`), our signal handlers
/// (`worker::own_signals`), the environment and the user to run as.
fn take_over_process(init: &mut DirtyInit<'_>) -> Result<SignalPipe, i32> {
    let cfg = init.cfg;
    if !leave_master(cfg, &mut init.master_signals, init.master_pid) {
        return Err(exit::BOOT_ERROR);
    }
    crate::process::set_title(&format!("rgun: dirty worker [{}]", cfg.proc_name()));
    tracing::info!("Booting dirty worker with pid: {}", std::process::id());
    use signal_hook::consts::*;
    let handled = [SIGTERM, SIGINT, SIGQUIT];
    let ignored = [SIGHUP, SIGTTIN, SIGTTOU, SIGUSR1, SIGUSR2, SIGWINCH];
    let signals = own_signals(&handled, &ignored, init.signals.take()).map_err(|e| {
        boot_failure(
            &mut init.to_master,
            &format!("cannot install signal handlers: {e}"),
        )
    })?;
    Python::with_gil(|py| crate::python::set_environ(py, &cfg.env)).map_err(|e| {
        boot_failure(
            &mut init.to_master,
            &format!("cannot set the environment: {e}"),
        )
    })?;
    if let Err(e) = init.identity.drop_privileges() {
        return Err(boot_failure(
            &mut init.to_master,
            &format!("cannot switch user/group: {e}"),
        ));
    }
    Ok(signals)
}

fn boot_failure(to_master: &mut UnixStream, text: &str) -> i32 {
    let _ = to_master.write_all(format!("E{text}").as_bytes());
    exit::BOOT_ERROR
}

fn worker_module(py: Python<'_>) -> PyResult<Bound<'_, PyModule>> {
    if let Ok(m) = py.import("rgun_dirty_worker") {
        return Ok(m);
    }
    let module = PyModule::from_code(
        py,
        &std::ffi::CString::new(WORKER_PY).expect("no NUL"),
        c"rgun_dirty_worker.py",
        c"rgun_dirty_worker",
    )?;
    py.import("sys")?
        .getattr("modules")?
        .set_item("rgun_dirty_worker", &module)?;
    Ok(module)
}

/// `dirty_post_fork`, the applications (instantiated, then `init()`), then
/// `dirty_worker_init`, as Gunicorn orders them.
fn load(py: Python<'_>, init: &DirtyInit<'_>) -> PyResult<Loaded> {
    let cfg = init.cfg;
    let cwd = std::env::current_dir().unwrap_or_else(|_| ".".into());
    crate::python::configure_sys(py, &cwd, &cfg.pythonpath_dirs())?;
    crate::worker::set_up_loggers(py, cfg)?;
    let hooks = crate::hooks::Hooks::load(py, cfg, init.age)?;
    if let Some(h) = &hooks {
        h.call(py, "dirty_post_fork", Vec::new());
    }
    let module = worker_module(py)?;
    let specs: Vec<(String, Option<u32>)> = cfg
        .dirty
        .dirty_apps
        .iter()
        .map(|s| (s.path.clone(), s.workers))
        .collect();
    // faulthandler (enabled by `configure_sys`) would print its own dump on the
    // time-out's SIGABRT; ours has the source lines.
    watch_abort()?;
    let apps = module.getattr("load_apps")?.call1((specs, init.index))?;
    let paths: Vec<String> = apps
        .call_method0("keys")?
        .try_iter()?
        .map(|k| k?.extract())
        .collect::<PyResult<_>>()?;
    if let Some(h) = &hooks {
        h.set_worker_attr(py, "app_paths", PyList::new(py, &paths)?.into_any())?;
        h.call(py, "dirty_worker_init", Vec::new());
    }
    let calls = module.getattr("Calls")?.call1((&apps,))?;
    py.import("gc")?.call_method0("freeze")?;
    Ok(Loaded {
        calls: calls.unbind(),
        apps: apps.unbind(),
        paths,
    })
}

/// The read end of the pipe SIGABRT writes to; the I/O loop watches it.
static ABORT_READ: AtomicI32 = AtomicI32::new(-1);
static ABORT_WRITE: AtomicI32 = AtomicI32::new(-1);

extern "C" fn on_sigabrt(_: libc::c_int) {
    let fd = ABORT_WRITE.load(Ordering::Relaxed);
    // SAFETY: write(2) on our pipe is async-signal-safe; a full pipe just fails.
    unsafe { libc::write(fd, [1u8].as_ptr().cast(), 1) };
}

/// SIGABRT (a call's time-out) wakes the I/O loop, replacing faulthandler's action.
fn watch_abort() -> std::io::Result<()> {
    let (read, write) = UnixStream::pair()?;
    write.set_nonblocking(true)?;
    ABORT_READ.store(read.into_raw_fd(), Ordering::Relaxed);
    ABORT_WRITE.store(write.into_raw_fd(), Ordering::Relaxed);
    // SAFETY: the handler only calls write(2); the action struct is fully initialised.
    unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = on_sigabrt as *const () as usize;
        action.sa_flags = libc::SA_RESTART;
        libc::sigemptyset(&mut action.sa_mask);
        if libc::sigaction(libc::SIGABRT, &action, std::ptr::null_mut()) != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// One call: its router id and payload.
type Job = (u64, Vec<u8>);

/// Until the router closes the link (after a TERM's drain) or a quick stop.
fn serve(init: &mut DirtyInit<'_>, mut signals: SignalPipe, loaded: &Loaded) {
    let writer = match init.to_router.try_clone() {
        Ok(w) => Arc::new(Mutex::new(w)),
        Err(e) => {
            tracing::error!("cannot share the router link: {e}");
            return;
        }
    };
    let (jobs, queue) = mpsc::channel::<Job>();
    let queue = Arc::new(Mutex::new(queue));
    let threads: Vec<_> = (0..init.cfg.dirty.dirty_threads)
        .filter_map(|n| {
            let queue = Arc::clone(&queue);
            let writer = Arc::clone(&writer);
            let calls = Python::with_gil(|py| loaded.calls.clone_ref(py));
            std::thread::Builder::new()
                .name(format!("rgun-dirty-{n}"))
                .spawn(move || run_calls(&queue, &writer, &calls))
                .ok()
        })
        .collect();
    io_loop(init, &mut signals, &writer, &jobs);
    drop(jobs);
    for t in threads {
        let _ = t.join();
    }
}

/// Reads calls and signals, beats the heartbeat; returns when the link ends.
fn io_loop(
    init: &mut DirtyInit<'_>,
    signals: &mut SignalPipe,
    writer: &Mutex<UnixStream>,
    jobs: &mpsc::Sender<Job>,
) {
    let mut frames = Frames::default();
    let mut buf = vec![0u8; 64 * 1024];
    let mut beat = Instant::now();
    loop {
        let mut fds = [
            libc::pollfd {
                fd: init.to_router.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: signals.fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: ABORT_READ.load(Ordering::Relaxed),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        // SAFETY: three valid pollfds for the duration of the call.
        unsafe { libc::poll(fds.as_mut_ptr(), 3, HEARTBEAT.as_millis() as i32) };
        if fds[2].revents != 0 {
            on_abort();
        }
        if beat.elapsed() >= HEARTBEAT {
            beat = Instant::now();
            let _ = init.to_master.write_all(b"H\n");
        }
        for sig in signals.take() {
            match sig {
                libc::SIGTERM => {
                    let bye = frame::encode(Kind::Status, BYE_ID, &[]);
                    let _ = writer
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .write_all(&bye);
                }
                _ => {
                    // SAFETY: a quick stop; nothing must wait for the call threads.
                    unsafe { libc::_exit(0) }
                }
            }
        }
        if fds[0].revents == 0 {
            continue;
        }
        match init.to_router.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => frames.push(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(_) => return,
        }
        loop {
            match frames.next_frame() {
                Ok(Some(Frame {
                    kind: Kind::Request,
                    id,
                    payload,
                })) => {
                    let _ = jobs.send((id, payload));
                }
                Ok(Some(_)) => {}
                Ok(None) => break,
                Err(e) => {
                    tracing::error!("bad frame from the dirty router: {e}");
                    return;
                }
            }
        }
    }
}

/// A pool thread: one call at a time, until the queue closes.
fn run_calls(
    queue: &Mutex<mpsc::Receiver<Job>>,
    writer: &Arc<Mutex<UnixStream>>,
    calls: &Py<PyAny>,
) {
    loop {
        let job = queue.lock().unwrap_or_else(|e| e.into_inner()).recv();
        let Ok((id, payload)) = job else {
            return;
        };
        let sender = Sender {
            id,
            writer: Arc::clone(writer),
        };
        Python::with_gil(|py| {
            if let Err(e) = run_call(py, calls.bind(py), &payload, sender) {
                tracing::error!(
                    "dirty call failed\n{}",
                    crate::python::format_exception(py, &e)
                );
            }
        });
    }
}

fn run_call(
    py: Python<'_>,
    calls: &Bound<'_, PyAny>,
    payload: &[u8],
    sender: Sender,
) -> PyResult<()> {
    let request = Value::decode(payload)
        .map_err(|e| pyo3::exceptions::PyValueError::new_err(e.to_string()))?;
    let field = |name: &str| request.get(name).cloned().unwrap_or(Value::None);
    let app_path = pyvalue::to_py(py, &field("app_path"))?;
    let action = pyvalue::to_py(py, &field("action"))?;
    let args = pyvalue::to_py(py, &field("args"))?;
    let args = match args.bind(py).downcast::<PyList>() {
        Ok(list) => list.to_tuple(),
        Err(_) => PyTuple::empty(py),
    };
    let kwargs = pyvalue::to_py(py, &field("kwargs"))?;
    let kwargs = match kwargs.bind(py).downcast::<PyDict>() {
        Ok(d) => d.clone(),
        Err(_) => PyDict::new(py),
    };
    let sender = Bound::new(py, sender)?;
    calls.call_method1("run", (app_path, action, args, kwargs, sender))?;
    Ok(())
}

/// `send(kind, value)` for `worker.py`: one frame of the call's answer.
#[pyclass]
struct Sender {
    id: u64,
    writer: Arc<Mutex<UnixStream>>,
}

#[pymethods]
impl Sender {
    fn __call__(&self, py: Python<'_>, kind: &str, value: &Bound<'_, PyAny>) -> PyResult<()> {
        let (kind, key) = match kind {
            "response" => (Kind::Response, "result"),
            "chunk" => (Kind::Chunk, "data"),
            "error" => (Kind::Error, "error"),
            _ => (Kind::End, ""),
        };
        let bytes = if kind == Kind::End {
            frame::encode(kind, self.id, &[])
        } else {
            let value = pyvalue::from_py(value)?;
            frame::encode_value(kind, self.id, &Value::Dict(vec![(key.to_owned(), value)]))
        };
        let writer = Arc::clone(&self.writer);
        py.allow_threads(move || {
            writer
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .write_all(&bytes)
        })?;
        Ok(())
    }
}

/// A call timed out and the master sent SIGABRT: every thread's Python stack goes to
/// the log (waiting a bounded time for the GIL; a thread stuck in C code holding it
/// gets faulthandler's dump), then the process ends.
fn on_abort() -> ! {
    let pid = std::process::id();
    tracing::error!("DIRTY WORKER TIMEOUT (pid:{pid}): a call ran past --dirty-timeout");
    let (done_tx, done_rx) = mpsc::channel();
    let _ = std::thread::Builder::new()
        .name("rgun-stacks".into())
        .spawn(move || {
            Python::with_gil(|py| match crate::worker::thread_stacks(py) {
                Ok(stacks) => {
                    let text: Vec<String> = stacks
                        .into_iter()
                        .map(|t| format!("Thread {} (most recent call last):\n{}", t.name, t.stack))
                        .collect();
                    tracing::error!("Stacks of dirty worker {pid}:\n{}", text.join("\n"));
                }
                Err(e) => tracing::error!(
                    "cannot format stacks: {}",
                    crate::python::format_exception(py, &e)
                ),
            });
            let _ = done_tx.send(());
        });
    if done_rx.recv_timeout(GIL_WAIT).is_err() {
        tracing::error!("the GIL is held (stuck in C code?); no Python stacks");
    }
    // SAFETY: _exit ends the process at once; the call threads are stuck.
    unsafe { libc::_exit(1) }
}
