//! Signals as data: handlers only set a flag and write a byte to a self-pipe (via
//! signal-hook); the owning loop polls the pipe and asks which signals fired.

use std::io::Read;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

pub struct SignalPipe {
    read: UnixStream,
    /// Kept so the write end outlives the handlers that use it.
    _write: UnixStream,
    flags: Vec<(i32, Arc<AtomicBool>)>,
    ids: Vec<signal_hook::SigId>,
}

impl SignalPipe {
    pub fn install(signals: &[i32]) -> std::io::Result<SignalPipe> {
        let (read, write) = UnixStream::pair()?;
        read.set_nonblocking(true)?;
        write.set_nonblocking(true)?;
        let mut flags = Vec::new();
        let mut ids = Vec::new();
        for &sig in signals {
            let flag = Arc::new(AtomicBool::new(false));
            ids.push(signal_hook::flag::register(sig, Arc::clone(&flag))?);
            ids.push(signal_hook::low_level::pipe::register(sig, write.try_clone()?)?);
            flags.push((sig, flag));
        }
        Ok(SignalPipe { read, _write: write, flags, ids })
    }

    pub fn fd(&self) -> RawFd {
        self.read.as_raw_fd()
    }

    /// Both pipe ends, for a forked child to close.
    pub fn fds(&self) -> [RawFd; 2] {
        [self.read.as_raw_fd(), self._write.as_raw_fd()]
    }

    /// The handler registrations, for a forked child to remove.
    pub fn ids(&self) -> Vec<signal_hook::SigId> {
        self.ids.clone()
    }

    /// Empties the pipe and returns the signals that fired since the last call, in the
    /// order they were installed.
    pub fn take(&self) -> Vec<i32> {
        let mut buf = [0u8; 128];
        while let Ok(n) = (&self.read).read(&mut buf) {
            if n == 0 {
                break;
            }
        }
        self.flags.iter().filter(|(_, f)| f.swap(false, Ordering::Relaxed)).map(|(s, _)| *s).collect()
    }
}
