//! `--threads N`: N Python threads that take work from the event loop — a connection
//! with a complete request to run, or one whose response needs more produced — and
//! hand the connection back through a waker. They never touch a client socket: the
//! loop sends, so a client that stops reading never holds a thread. They also close
//! abandoned responses, whose `close()` needs the GIL the loop does not hold. So two
//! kinds of job: run an exchange, close a response. An HTTP/2 connection stays with
//! the loop; its streams come here one by one.

use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Mutex};

use mio::Waker;
use pyo3::prelude::*;

use super::conn::{Conn, StreamJob};
use super::{Service, Shared};
use crate::wsgi::response::WsgiSource;

/// An exchange for a pool thread, and what comes back when its part is done.
// A connection moves by value, as before the pool had two kinds of work: boxing it
// would cost an allocation per hand-off, and few jobs wait at a time.
#[allow(clippy::large_enum_variant)]
pub enum Work {
    /// An HTTP/1 connection: run its request, or produce more of its response.
    Conn(Conn),
    /// One HTTP/2 stream: run its application, or produce more of its response. The
    /// connection stays with the loop, so its other streams run on other threads
    /// meanwhile.
    Stream(Box<StreamJob>),
}

#[allow(clippy::large_enum_variant)]
enum Job {
    /// Run an exchange (slot key, the work).
    Run(usize, Work),
    /// Call `close()` on responses whose client is gone (their `close()` needs the
    /// GIL the loop does not hold).
    Close(Vec<WsgiSource>),
}

/// Work coming back: its slot key, itself, and whether to keep its connection open
/// (false: an HTTP/1 connection's request failed so that it must close).
type Finished = (usize, Work, bool);

pub struct Pool {
    jobs: Sender<Job>,
    finished: Receiver<Finished>,
}

impl Pool {
    pub fn start(
        threads: usize,
        shared: Arc<Shared>,
        service: Arc<Service>,
        waker: Arc<Waker>,
    ) -> std::io::Result<Pool> {
        let (jobs, job_rx) = channel::<Job>();
        let (done_tx, finished) = channel::<Finished>();
        let job_rx = Arc::new(Mutex::new(job_rx));
        for i in 0..threads {
            let job_rx = Arc::clone(&job_rx);
            let done_tx = done_tx.clone();
            let shared = Arc::clone(&shared);
            let service = Arc::clone(&service);
            let waker = Arc::clone(&waker);
            std::thread::Builder::new()
                .name(format!("rgun-py-{i}"))
                .spawn(move || loop {
                    let job = job_rx.lock().unwrap_or_else(|e| e.into_inner()).recv();
                    match job {
                        Err(_) => return,
                        Ok(Job::Close(sources)) => Python::with_gil(|py| {
                            for mut source in sources {
                                source.close(py);
                            }
                        }),
                        Ok(Job::Run(key, mut work)) => {
                            let keep = Python::with_gil(|py| match &mut work {
                                Work::Conn(conn) => conn.serve_dispatched(py, &service, &shared, i),
                                Work::Stream(job) => {
                                    job.run(py, &service, &shared, i);
                                    true
                                }
                            });
                            if done_tx.send((key, work, keep)).is_err() {
                                return;
                            }
                            let _ = waker.wake();
                        }
                    }
                })?;
        }
        Ok(Pool { jobs, finished })
    }

    /// Hands an exchange to a pool thread.
    pub fn run(&self, key: usize, work: Work) {
        // The receivers live as long as the process; a send cannot fail.
        let _ = self.jobs.send(Job::Run(key, work));
    }

    /// Work whose part is done, back for the loop.
    pub fn finished(&self) -> impl Iterator<Item = Finished> + '_ {
        self.finished.try_iter()
    }

    /// `close()` for responses whose client is gone.
    pub fn close_sources(&self, sources: Vec<WsgiSource>) {
        if !sources.is_empty() {
            let _ = self.jobs.send(Job::Close(sources));
        }
    }
}
