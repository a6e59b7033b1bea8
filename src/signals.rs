//! Signals as data: handlers only set a flag and write a byte to a self-pipe (via
//! signal-hook); the owning loop polls the pipe and asks which signals fired.

use std::io::Read;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

pub struct SignalPipe {
    read: UnixStream,
    /// Kept so the write end outlives the handlers that use it.
    _write: UnixStream,
    /// How many times each signal fired since the last `take`.
    counts: Vec<(i32, Arc<AtomicUsize>)>,
    ids: Vec<signal_hook::SigId>,
}

impl SignalPipe {
    pub fn install(signals: &[i32]) -> std::io::Result<SignalPipe> {
        let (read, write) = UnixStream::pair()?;
        read.set_nonblocking(true)?;
        write.set_nonblocking(true)?;
        let mut counts = Vec::new();
        let mut ids = Vec::new();
        for &sig in signals {
            let count = Arc::new(AtomicUsize::new(0));
            let in_handler = Arc::clone(&count);
            // SAFETY: the action only does an atomic increment, which is
            // async-signal-safe; it allocates nothing and takes no lock.
            ids.push(unsafe {
                signal_hook::low_level::register(sig, move || {
                    in_handler.fetch_add(1, Ordering::Relaxed);
                })
            }?);
            ids.push(signal_hook::low_level::pipe::register(
                sig,
                write.try_clone()?,
            )?);
            counts.push((sig, count));
        }
        Ok(SignalPipe {
            read,
            _write: write,
            counts,
            ids,
        })
    }

    pub fn fd(&self) -> RawFd {
        self.read.as_raw_fd()
    }

    /// Registers the pipe's read end with a poll loop.
    pub fn register(&self, registry: &mio::Registry, token: mio::Token) -> std::io::Result<()> {
        registry.register(
            &mut mio::unix::SourceFd(&self.fd()),
            token,
            mio::Interest::READABLE,
        )
    }

    /// Both pipe ends, for a forked child to close.
    pub fn fds(&self) -> [RawFd; 2] {
        [self.read.as_raw_fd(), self._write.as_raw_fd()]
    }

    /// The handler registrations, for a forked child to remove.
    pub fn ids(&self) -> Vec<signal_hook::SigId> {
        self.ids.clone()
    }

    /// Empties the pipe and returns the signals that fired since the last call (a signal
    /// that fired twice appears twice), in the order they were installed.
    pub fn take(&self) -> Vec<i32> {
        let mut buf = [0u8; 128];
        while let Ok(n) = (&self.read).read(&mut buf) {
            if n == 0 {
                break;
            }
        }
        let mut fired = Vec::new();
        for (sig, count) in &self.counts {
            let n = count.swap(0, Ordering::Relaxed);
            fired.extend(std::iter::repeat_n(*sig, n));
        }
        fired
    }
}
