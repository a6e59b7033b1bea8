//! `Transport`: the one way to a client connection's bytes. Every read, write,
//! vectored write, file send and half-close of a client socket goes through it, and
//! only the worker's event loop owns one — so a pool thread can never park on a slow
//! client, and TLS can later wrap exactly these calls.
//!
//! Non-blocking, no SIGPIPE (`MSG_NOSIGNAL`); errors are `io::Error`s as the kernel
//! gives them (`WouldBlock` when the socket is full or empty).

use std::io::{self, IoSlice};
use std::os::fd::{AsRawFd, RawFd};

/// A connected, non-blocking client socket.
pub struct Transport {
    sock: socket2::Socket,
}

impl Transport {
    pub fn new(sock: socket2::Socket) -> Transport {
        Transport { sock }
    }

    /// For registering with the event loop's poller, never for I/O.
    pub fn fd(&self) -> RawFd {
        self.sock.as_raw_fd()
    }

    /// One recv(2) into `buf`'s spare capacity (at least `want` bytes of it);
    /// `Ok(0)` is the client's end of stream. A read that leaves `buf` full (length ==
    /// capacity) may have left more in the socket.
    pub fn read(&self, buf: &mut Vec<u8>, want: usize) -> io::Result<usize> {
        buf.reserve(want);
        let spare = buf.spare_capacity_mut();
        // SAFETY: recv writes at most `spare.len()` bytes into the vector's spare
        // capacity; we only extend the length by what the kernel reports written.
        let n = unsafe { libc::recv(self.fd(), spare.as_mut_ptr().cast(), spare.len(), 0) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        let n = n as usize;
        // SAFETY: the kernel initialised `n` bytes past the old length.
        unsafe { buf.set_len(buf.len() + n) };
        Ok(n)
    }

    pub fn write(&self, data: &[u8]) -> io::Result<usize> {
        // SAFETY: `data` is a valid slice for the duration of the call.
        let n = unsafe {
            libc::send(
                self.fd(),
                data.as_ptr().cast(),
                data.len(),
                libc::MSG_NOSIGNAL,
            )
        };
        if n < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(n as usize)
        }
    }

    /// One sendmsg(2) of several pieces; returns the bytes taken, in order.
    pub fn write_vectored(&self, pieces: &[IoSlice<'_>]) -> io::Result<usize> {
        // SAFETY: a zeroed msghdr is valid (no name, no control data); IoSlice is
        // ABI-compatible with iovec, and the slices outlive the call.
        let n = unsafe {
            let mut msg: libc::msghdr = std::mem::zeroed();
            msg.msg_iov = pieces.as_ptr() as *mut libc::iovec;
            msg.msg_iovlen = pieces.len() as _;
            libc::sendmsg(self.fd(), &msg, libc::MSG_NOSIGNAL)
        };
        if n < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(n as usize)
        }
    }

    /// One sendfile(2) of up to `count` bytes of `file` from `*offset` (advanced by
    /// what was sent); `Ok(0)` is the file's end.
    pub fn send_file(&self, file: RawFd, offset: &mut u64, count: usize) -> io::Result<usize> {
        let mut off = *offset as libc::off_t;
        // SAFETY: both descriptors are open for the duration of the call; `off` is a
        // valid local the kernel updates.
        let n = unsafe { libc::sendfile(self.fd(), file, &mut off, count) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        *offset = off as u64;
        Ok(n as usize)
    }

    /// Half-close: no more bytes from us; the client can still send (and we read
    /// and discard) until it closes.
    pub fn shutdown_write(&self) {
        let _ = self.sock.shutdown(std::net::Shutdown::Write);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::os::unix::net::UnixStream;

    fn pair() -> (Transport, UnixStream) {
        let (a, b) = UnixStream::pair().unwrap();
        a.set_nonblocking(true).unwrap();
        (
            Transport::new(socket2::Socket::from(std::os::fd::OwnedFd::from(a))),
            b,
        )
    }

    #[test]
    fn reads_what_was_sent_then_would_block_then_eof() {
        let (t, mut peer) = pair();
        peer.write_all(b"hello").unwrap();
        let mut buf = Vec::new();
        assert_eq!(t.read(&mut buf, 64).unwrap(), 5);
        assert_eq!(buf, b"hello");
        let e = t.read(&mut buf, 64).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::WouldBlock);
        drop(peer);
        assert_eq!(t.read(&mut buf, 64).unwrap(), 0);
    }

    #[test]
    fn vectored_write_keeps_order_and_half_close_ends_the_stream() {
        let (t, mut peer) = pair();
        let n = t
            .write_vectored(&[IoSlice::new(b"ab"), IoSlice::new(b""), IoSlice::new(b"cde")])
            .unwrap();
        assert_eq!(n, 5);
        t.shutdown_write();
        let mut got = Vec::new();
        peer.read_to_end(&mut got).unwrap();
        assert_eq!(got, b"abcde");
    }

    #[test]
    fn a_full_socket_would_block() {
        let (t, _peer) = pair();
        let chunk = vec![0u8; 64 * 1024];
        let mut total = 0usize;
        let err = loop {
            match t.write(&chunk) {
                Ok(n) => total += n,
                Err(e) => break e,
            }
            assert!(total < 64 << 20, "a socket nobody reads took 64 MiB");
        };
        assert_eq!(err.kind(), io::ErrorKind::WouldBlock);
    }
}
