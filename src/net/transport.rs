//! `Transport`: the one way to a client connection's bytes. Every read, write,
//! vectored write, file send and half-close of a client socket goes through it, and
//! only the worker's event loop owns one — so a pool thread can never park on a slow
//! client. With `--certfile` the bytes pass through a TLS session inside it
//! (`net::tls`): the rest of the server sees plaintext through the same calls.
//!
//! Non-blocking, no SIGPIPE (`MSG_NOSIGNAL`); errors are `io::Error`s as the kernel
//! gives them (`WouldBlock` when the socket is full or empty).

use std::io::{self, IoSlice};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;

use super::sys::{recv_into, send, send_vectored};
use super::tls::TlsStream;

/// A connected, non-blocking client socket, in the clear or inside TLS.
pub struct Transport {
    sock: socket2::Socket,
    /// The TLS session the bytes pass through (`--certfile`); None in the clear.
    tls: Option<Box<TlsStream>>,
}

impl Transport {
    pub fn new(sock: socket2::Socket) -> Transport {
        Transport { sock, tls: None }
    }

    /// A server-side TLS session on `sock`; the handshake happens in the first reads.
    pub fn tls(sock: socket2::Socket, config: &Arc<rustls::ServerConfig>) -> io::Result<Transport> {
        Ok(Transport {
            sock,
            tls: Some(Box::new(TlsStream::new(config)?)),
        })
    }

    /// For registering with the event loop's poller, never for I/O.
    pub fn fd(&self) -> RawFd {
        self.sock.as_raw_fd()
    }

    /// The bytes are inside TLS (the request's URL scheme is https).
    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// TLS negotiated HTTP/2 by ALPN (`--http-protocols h2,...`).
    pub fn negotiated_h2(&self) -> bool {
        self.tls.as_ref().is_some_and(|t| t.negotiated_h2())
    }

    /// The client certificate's subject (RFC 4514), when it presented one.
    pub fn peer_subject(&self) -> Option<&str> {
        self.tls.as_ref().and_then(|t| t.peer_subject())
    }

    /// A read may return bytes without a new readiness event: TLS holds decrypted
    /// bytes, or its last read of the socket did not find it empty.
    pub fn may_have_more(&self) -> bool {
        self.tls.as_ref().is_some_and(|t| t.may_have_more())
    }

    /// TLS holds bytes for the socket (a handshake answer it had no room for).
    pub fn wants_write(&self) -> bool {
        self.tls.as_ref().is_some_and(|t| t.wants_write())
    }

    /// One read into `buf`'s spare capacity (at least `want` bytes of it); `Ok(0)` is
    /// the client's end of stream. A read that leaves `buf` full (length == capacity)
    /// may have left more in the socket.
    pub fn read(&mut self, buf: &mut Vec<u8>, want: usize) -> io::Result<usize> {
        let fd = self.fd();
        match &mut self.tls {
            Some(tls) => tls.read(fd, buf, want),
            None => recv_into(fd, buf, want),
        }
    }

    pub fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let fd = self.fd();
        match &mut self.tls {
            Some(tls) => tls.write(fd, data),
            None => send(fd, data),
        }
    }

    /// One sendmsg(2) of several pieces; returns the bytes taken, in order.
    pub fn write_vectored(&mut self, pieces: &[IoSlice<'_>]) -> io::Result<usize> {
        let fd = self.fd();
        match &mut self.tls {
            Some(tls) => tls.write_vectored(fd, pieces),
            None => send_vectored(fd, pieces),
        }
    }

    /// Up to `count` bytes of `file` from `*offset` (advanced by what was sent):
    /// sendfile(2) in the clear; in TLS, read and encrypted in bounded chunks. `Ok(0)`
    /// is the file's end.
    pub fn send_file(&mut self, file: RawFd, offset: &mut u64, count: usize) -> io::Result<usize> {
        let fd = self.fd();
        if let Some(tls) = &mut self.tls {
            return tls.send_file(fd, file, offset, count);
        }
        let mut off = *offset as libc::off_t;
        // SAFETY: both descriptors are open for the duration of the call; `off` is a
        // valid local the kernel updates.
        let n = unsafe { libc::sendfile(fd, file, &mut off, count) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        *offset = off as u64;
        Ok(n as usize)
    }

    /// Sends what TLS has encrypted but the socket has not taken yet (`WouldBlock`
    /// while some remains). Nothing to do in the clear: a write that returned was sent.
    pub fn flush_pending(&mut self) -> io::Result<()> {
        let fd = self.fd();
        match &mut self.tls {
            Some(tls) => tls.send_pending(fd),
            None => Ok(()),
        }
    }

    /// Half-close: no more bytes from us (in TLS, after a close_notify); the client can
    /// still send (and we read and discard) until it closes.
    pub fn shutdown_write(&mut self) {
        let fd = self.fd();
        if let Some(tls) = &mut self.tls {
            tls.close_notify(fd);
        }
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
        let (mut t, mut peer) = pair();
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
        let (mut t, mut peer) = pair();
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
        let (mut t, _peer) = pair();
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
