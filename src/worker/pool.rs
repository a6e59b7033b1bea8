//! `--threads N`: N Python threads that take work from the event loop — a connection
//! with a complete request to run, or one whose response needs more produced — and
//! hand the connection back through a waker. They never touch a client socket: the
//! loop sends, so a client that stops reading never holds a thread. They also dispose
//! of abandoned responses, whose `close()` needs the GIL the loop does not hold. An
//! HTTP/2 connection stays with the loop; its streams come here one by one.

use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Mutex};

use mio::Waker;
use pyo3::prelude::*;

use super::conn::{Conn, Responding, StreamJob};
use super::{Service, Shared};
use crate::wsgi::response::WsgiSource;

// A connection moves by value, as before the pool had two kinds of work: boxing it
// would cost an allocation per hand-off, and few jobs wait at a time.
#[allow(clippy::large_enum_variant)]
enum Job {
    /// Run the request or produce more of the response (slot key, connection).
    Serve(usize, Conn),
    /// Call `close()` on a response whose connection is gone.
    Dispose(Box<Responding>),
    /// Run an HTTP/2 stream's application (slot key, stream): the connection stays
    /// with the loop, so its other streams run on other threads meanwhile.
    Stream(usize, Box<StreamJob>),
    /// Forget an HTTP/2 stream whose connection is gone.
    Abandon(Box<StreamJob>),
    /// Call `close()` on HTTP/2 streams' response sources that ended early.
    Close(Vec<WsgiSource>),
}

/// A connection coming back: its slot key, itself, and whether to keep it open.
type Finished = (usize, Conn, bool);

pub struct Pool {
    jobs: Sender<Job>,
    finished: Receiver<Finished>,
    streams: Receiver<(usize, Box<StreamJob>)>,
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
        let (stream_tx, streams) = channel::<(usize, Box<StreamJob>)>();
        let job_rx = Arc::new(Mutex::new(job_rx));
        for i in 0..threads {
            let job_rx = Arc::clone(&job_rx);
            let done_tx = done_tx.clone();
            let stream_tx = stream_tx.clone();
            let shared = Arc::clone(&shared);
            let service = Arc::clone(&service);
            let waker = Arc::clone(&waker);
            std::thread::Builder::new()
                .name(format!("rgun-py-{i}"))
                .spawn(move || loop {
                    let job = job_rx.lock().unwrap_or_else(|e| e.into_inner()).recv();
                    match job {
                        Err(_) => return,
                        Ok(Job::Dispose(r)) => Python::with_gil(|py| r.dispose(py)),
                        Ok(Job::Abandon(job)) => Python::with_gil(|py| job.abandon(py, &shared)),
                        Ok(Job::Close(sources)) => Python::with_gil(|py| {
                            for mut source in sources {
                                source.close(py);
                            }
                        }),
                        Ok(Job::Stream(key, mut job)) => {
                            Python::with_gil(|py| job.run(py, &service, &shared, i));
                            if stream_tx.send((key, job)).is_err() {
                                return;
                            }
                            let _ = waker.wake();
                        }
                        Ok(Job::Serve(key, mut conn)) => {
                            let keep = Python::with_gil(|py| {
                                conn.serve_dispatched(py, &service, &shared, i)
                            });
                            if done_tx.send((key, conn, keep)).is_err() {
                                return;
                            }
                            let _ = waker.wake();
                        }
                    }
                })?;
        }
        Ok(Pool {
            jobs,
            finished,
            streams,
        })
    }

    pub fn submit(&self, key: usize, conn: Conn) {
        // The receivers live as long as the process; a send cannot fail.
        let _ = self.jobs.send(Job::Serve(key, conn));
    }

    pub fn dispose(&self, response: Box<Responding>) {
        let _ = self.jobs.send(Job::Dispose(response));
    }

    pub fn finished(&self) -> impl Iterator<Item = Finished> + '_ {
        self.finished.try_iter()
    }

    pub fn submit_stream(&self, key: usize, job: StreamJob) {
        let _ = self.jobs.send(Job::Stream(key, Box::new(job)));
    }

    pub fn close_sources(&self, sources: Vec<WsgiSource>) {
        if !sources.is_empty() {
            let _ = self.jobs.send(Job::Close(sources));
        }
    }

    pub fn abandon_stream(&self, job: Box<StreamJob>) {
        let _ = self.jobs.send(Job::Abandon(job));
    }

    /// HTTP/2 streams whose application part is done, for their connections.
    pub fn finished_streams(&self) -> impl Iterator<Item = (usize, Box<StreamJob>)> + '_ {
        self.streams.try_iter()
    }
}
