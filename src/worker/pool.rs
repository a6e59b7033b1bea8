//! `--threads N`: N Python threads that each take a connection with a complete request
//! from the event loop, run the application, send the response (waiting on the socket
//! with the GIL released) and hand the connection back through a waker.

use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Mutex};

use mio::Waker;
use pyo3::prelude::*;

use super::conn::Conn;
use super::Shared;

type Job = (usize, Conn);
/// A connection coming back: its slot key, itself, and whether to keep it open.
type Finished = (usize, Conn, bool);

pub struct Pool {
    jobs: Sender<Job>,
    finished: Receiver<Finished>,
}

impl Pool {
    pub fn start(threads: usize, shared: Arc<Shared>, waker: Arc<Waker>) -> std::io::Result<Pool> {
        let (jobs, job_rx) = channel::<Job>();
        let (done_tx, finished) = channel::<Finished>();
        let job_rx = Arc::new(Mutex::new(job_rx));
        for i in 0..threads {
            let job_rx = Arc::clone(&job_rx);
            let done_tx = done_tx.clone();
            let shared = Arc::clone(&shared);
            let waker = Arc::clone(&waker);
            std::thread::Builder::new()
                .name(format!("rgun-py-{i}"))
                .spawn(move || loop {
                    let job = job_rx.lock().unwrap_or_else(|e| e.into_inner()).recv();
                    let Ok((key, mut conn)) = job else { return };
                    let keep = Python::with_gil(|py| conn.serve_dispatched(py, &shared));
                    if done_tx.send((key, conn, keep)).is_err() {
                        return;
                    }
                    let _ = waker.wake();
                })?;
        }
        Ok(Pool { jobs, finished })
    }

    pub fn submit(&self, key: usize, conn: Conn) {
        // The receivers live as long as the process; a send cannot fail.
        let _ = self.jobs.send((key, conn));
    }

    pub fn finished(&self) -> impl Iterator<Item = Finished> + '_ {
        self.finished.try_iter()
    }
}
