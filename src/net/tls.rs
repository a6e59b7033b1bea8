//! `TlsStream`: a server-side rustls session driven sans-I/O from inside `Transport`.
//! The event loop still owns the socket: ciphertext moves between it and rustls only
//! in the calls the loop makes (`read_tls`/`process_new_packets`/`write_tls`), so the
//! handshake is just more bytes a slow client owes us before its request head, bounded
//! by the same deadline, and a client that stops reading fills rustls's bounded send
//! buffer (then `WouldBlock`) rather than anything else.

use std::io::{self, IoSlice, Read, Write};
use std::os::fd::RawFd;
use std::sync::Arc;

use rustls::{ServerConfig, ServerConnection};

use super::sys::{recv, send, send_vectored};

/// Ciphertext and not-yet-encrypted plaintext rustls holds for the socket before a
/// write returns `WouldBlock`: what a response may buffer beyond the socket's own.
const SEND_BUFFER_BYTES: usize = 64 * 1024;
/// Largest piece of a file read and encrypted at once (a TLS record holds 16 KiB).
const FILE_CHUNK_BYTES: usize = 16 * 1024;
/// Most bytes of a plain-HTTP request to a TLS port we read (and discard) before
/// answering it, so the close that follows is not a reset.
const PLAIN_DISCARD_BYTES: usize = 64 * 1024;
/// The answer to plain HTTP sent to a TLS port.
const PLAIN_HTTP_ANSWER: &[u8] = b"HTTP/1.1 400 Bad Request\r\nConnection: close\r\nContent-Type: text/plain\r\nContent-Length: 47\r\n\r\nThis port speaks HTTPS: use https:// to reach it\n";

pub struct TlsStream {
    conn: ServerConnection,
    /// The first bytes were looked at: a TLS record, or plain HTTP (answered, closed).
    sniffed: bool,
    /// The socket was found empty (or short) on its last read.
    drained: bool,
    /// The client's certificate subject, once the handshake is done.
    subject: Option<Option<String>>,
    /// A file's bytes on their way into a TLS record.
    file_buf: Vec<u8>,
}

/// The socket as rustls's `Write` (non-blocking; `MSG_NOSIGNAL`).
struct Sock(RawFd);

/// The socket as rustls's `Read`, noting whether a read came back short: a stream
/// socket that returns less than asked is empty, so no further recv is needed to
/// find out (the next bytes raise a new edge).
struct SockRead<'a> {
    fd: RawFd,
    short: &'a mut bool,
}

impl Read for SockRead<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = recv(self.fd, buf, 0)?;
        *self.short = n < buf.len();
        Ok(n)
    }
}

impl Write for Sock {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        send(self.0, data)
    }
    fn write_vectored(&mut self, pieces: &[IoSlice<'_>]) -> io::Result<usize> {
        send_vectored(self.0, pieces)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fn would_block(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::WouldBlock
}

impl TlsStream {
    pub fn new(config: &Arc<ServerConfig>) -> io::Result<TlsStream> {
        let mut conn = ServerConnection::new(Arc::clone(config)).map_err(io::Error::other)?;
        conn.set_buffer_limit(Some(SEND_BUFFER_BYTES));
        Ok(TlsStream {
            conn,
            sniffed: false,
            drained: false,
            subject: None,
            file_buf: Vec::new(),
        })
    }

    pub fn may_have_more(&self) -> bool {
        !self.drained
    }

    pub fn wants_write(&self) -> bool {
        self.conn.wants_write()
    }

    /// The client and we agreed on HTTP/2 by ALPN.
    pub fn negotiated_h2(&self) -> bool {
        self.conn.alpn_protocol() == Some(b"h2")
    }

    pub fn peer_subject(&self) -> Option<&str> {
        self.subject.as_ref().and_then(|s| s.as_deref())
    }

    /// Decrypted bytes into `buf`'s spare capacity (at least `want`), reading and
    /// processing ciphertext (and sending handshake answers) until some arrive, the
    /// socket is empty (`WouldBlock`) or the client is gone (`Ok(0)`; an EOF without
    /// close_notify counts as one, Gunicorn's `suppress_ragged_eofs`).
    pub fn read(&mut self, fd: RawFd, buf: &mut Vec<u8>, want: usize) -> io::Result<usize> {
        if !self.sniffed {
            self.sniff(fd)?;
        }
        loop {
            let state = match self.conn.process_new_packets() {
                Ok(state) => state,
                Err(e) => {
                    // rustls queued an alert saying why; it is all the client gets.
                    let _ = self.send_pending(fd);
                    return Err(io::Error::new(io::ErrorKind::InvalidData, e));
                }
            };
            let available = state.plaintext_bytes_to_read();
            let closed = state.peer_has_closed();
            if self.subject.is_none() && !self.conn.is_handshaking() {
                self.subject = Some(
                    self.conn
                        .peer_certificates()
                        .and_then(|chain| chain.first())
                        .and_then(|cert| super::x509::subject(cert)),
                );
            }
            // Handshake flights, tickets, alerts: out as soon as they exist.
            match self.send_pending(fd) {
                Err(e) if !would_block(&e) => return Err(e),
                _ => {}
            }
            if available > 0 {
                buf.reserve(want);
                let take = available.min(buf.capacity() - buf.len());
                let old = buf.len();
                buf.resize(old + take, 0);
                let got = self.conn.reader().read(&mut buf[old..]);
                buf.truncate(old + *got.as_ref().unwrap_or(&0));
                return got;
            }
            if closed {
                return Ok(0);
            }
            let mut short = false;
            match self.conn.read_tls(&mut SockRead {
                fd,
                short: &mut short,
            }) {
                Ok(0) => return Ok(0),
                Ok(_) => self.drained = short,
                Err(e) => {
                    if would_block(&e) {
                        self.drained = true;
                    }
                    return Err(e);
                }
            }
        }
    }

    /// Looks at the first byte without taking it: a TLS handshake record starts with
    /// 22. Plain HTTP (a letter) gets a 400 in the clear and the connection's end.
    fn sniff(&mut self, fd: RawFd) -> io::Result<()> {
        let mut first = [0u8; 1];
        match recv(fd, &mut first, libc::MSG_PEEK) {
            Ok(0) => return Ok(()),
            Ok(_) => self.sniffed = true,
            Err(e) => {
                if would_block(&e) {
                    self.drained = true;
                }
                return Err(e);
            }
        }
        if !first[0].is_ascii_alphabetic() {
            return Ok(());
        }
        let mut discard = vec![0u8; PLAIN_DISCARD_BYTES];
        let _ = recv(fd, &mut discard, 0);
        let _ = send(fd, PLAIN_HTTP_ANSWER);
        Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "plain HTTP sent to a TLS port",
        ))
    }

    /// Takes as much of `data` as the send buffer has room for and sends what it can.
    pub fn write(&mut self, fd: RawFd, data: &[u8]) -> io::Result<usize> {
        self.write_with(fd, |w| w.write(data), data.is_empty())
    }

    pub fn write_vectored(&mut self, fd: RawFd, pieces: &[IoSlice<'_>]) -> io::Result<usize> {
        let empty = pieces.iter().all(|p| p.is_empty());
        self.write_with(fd, |w| w.write_vectored(pieces), empty)
    }

    fn write_with(
        &mut self,
        fd: RawFd,
        put: impl FnOnce(&mut rustls::Writer<'_>) -> io::Result<usize>,
        empty: bool,
    ) -> io::Result<usize> {
        match self.send_pending(fd) {
            Err(e) if !would_block(&e) => return Err(e),
            _ => {}
        }
        let n = put(&mut self.conn.writer())?;
        match self.send_pending(fd) {
            Err(e) if !would_block(&e) => return Err(e),
            _ => {}
        }
        if n == 0 && !empty {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        Ok(n)
    }

    /// A file range through TLS: read (pread, so `offset` is ours to advance) at most
    /// one chunk and encrypt what the send buffer takes of it.
    pub fn send_file(
        &mut self,
        fd: RawFd,
        file: RawFd,
        offset: &mut u64,
        count: usize,
    ) -> io::Result<usize> {
        let want = count.min(FILE_CHUNK_BYTES);
        self.file_buf.resize(want, 0);
        // SAFETY: pread writes at most `want` bytes into the buffer, which holds `want`.
        let got = unsafe {
            libc::pread(
                file,
                self.file_buf.as_mut_ptr().cast(),
                want,
                *offset as libc::off_t,
            )
        };
        if got < 0 {
            return Err(io::Error::last_os_error());
        }
        if got == 0 {
            return Ok(0);
        }
        let chunk = std::mem::take(&mut self.file_buf);
        let sent = self.write(fd, &chunk[..got as usize]);
        self.file_buf = chunk;
        let n = sent?;
        *offset += n as u64;
        Ok(n)
    }

    /// Sends the ciphertext rustls holds; `WouldBlock` while some remains.
    pub fn send_pending(&mut self, fd: RawFd) -> io::Result<()> {
        while self.conn.wants_write() {
            match self.conn.write_tls(&mut Sock(fd)) {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Says goodbye in TLS (best effort: the socket may be full).
    pub fn close_notify(&mut self, fd: RawFd) {
        self.conn.send_close_notify();
        let _ = self.send_pending(fd);
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::os::fd::OwnedFd;
    use std::os::unix::net::UnixStream;

    use super::*;
    use crate::net::outbox::Outbox;
    use crate::net::tls_setup::{server_config, TlsOptions};
    use crate::net::transport::Transport;

    /// A server `Transport` in TLS over a socketpair, and a rustls client on the
    /// other end (blocking), trusting the self-signed certificate.
    fn pair() -> (Transport, StreamOwnedClient) {
        let dir = tempfile::tempdir().unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["localhost".to_owned()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        std::fs::write(dir.path().join("c.pem"), cert.pem()).unwrap();
        std::fs::write(dir.path().join("k.pem"), key.serialize_pem()).unwrap();
        let config = server_config(&TlsOptions {
            certfile: &dir.path().join("c.pem"),
            keyfile: Some(&dir.path().join("k.pem")),
            ca_certs: None,
            cert_reqs: 0,
            ciphers: None,
            alpn: vec![b"http/1.1".to_vec()],
        })
        .unwrap();
        let (a, b) = UnixStream::pair().unwrap();
        a.set_nonblocking(true).unwrap();
        let server = Transport::tls(socket2::Socket::from(OwnedFd::from(a)), &config).unwrap();
        let mut roots = rustls::RootCertStore::empty();
        roots.add(cert.der().clone()).unwrap();
        let client_config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
        let conn = rustls::ClientConnection::new(
            Arc::new(client_config),
            rustls::pki_types::ServerName::try_from("localhost").unwrap(),
        )
        .unwrap();
        (server, rustls::StreamOwned::new(conn, b))
    }

    type StreamOwnedClient = rustls::StreamOwned<rustls::ClientConnection, UnixStream>;

    #[test]
    fn a_stalled_reader_costs_one_bounded_buffer_then_gets_everything_in_order() {
        let (mut server, mut client) = pair();
        let file_data: Vec<u8> = (0..200_000u32).map(|i| (i % 241) as u8).collect();
        let mut file = tempfile::tempfile().unwrap();
        file.write_all(&file_data).unwrap();
        let big: Vec<u8> = (0..3_000_000u32).map(|i| (i % 13) as u8).collect();
        let client_thread = std::thread::spawn(move || {
            client.write_all(b"ping").unwrap();
            client.flush().unwrap();
            // Stall long enough for the server to fill the socket and its buffer.
            std::thread::sleep(std::time::Duration::from_millis(300));
            let mut got = Vec::new();
            client.read_to_end(&mut got).unwrap();
            got
        });
        // The handshake and the request, through the same reads as plaintext.
        let mut buf = Vec::new();
        while buf.len() < 4 {
            match server.read(&mut buf, 4096) {
                Ok(0) => panic!("client left"),
                Ok(_) => {}
                Err(e) if would_block(&e) => {
                    std::thread::sleep(std::time::Duration::from_millis(2))
                }
                Err(e) => panic!("{e}"),
            }
        }
        assert_eq!(buf, b"ping");
        // What a reader that takes nothing makes us hold: the kernel's buffers (as a
        // plain socketpair shows) plus rustls's bounded one, never the whole response.
        let chunk = vec![b'z'; 16 * 1024];
        let mut taken = 0usize;
        loop {
            match server.write(&chunk) {
                Ok(n) => taken += n,
                Err(e) if would_block(&e) => break,
                Err(e) => panic!("{e}"),
            }
            assert!(taken < 64 << 20, "a stalled reader took 64 MiB");
        }
        let (plain, _peer) = UnixStream::pair().unwrap();
        plain.set_nonblocking(true).unwrap();
        let mut plain = Transport::new(socket2::Socket::from(OwnedFd::from(plain)));
        let mut kernel = 0usize;
        while let Ok(n) = plain.write(&chunk) {
            kernel += n;
        }
        assert!(
            taken <= kernel + SEND_BUFFER_BYTES + 32 * 1024,
            "TLS took {taken} bytes; the kernel holds {kernel}"
        );
        let mut out = Outbox::default();
        out.buf.extend_from_slice(b"head");
        out.push_shared(Box::new(big.clone()), 0, big.len());
        out.push_file(OwnedFd::from(file), 0, 1 << 40);
        let mut blocked = 0;
        loop {
            match out.flush(&mut server) {
                Ok(()) => break,
                Err(e) if would_block(&e) => {
                    blocked += 1;
                    std::thread::sleep(std::time::Duration::from_millis(1));
                }
                Err(e) => panic!("{e}"),
            }
        }
        assert!(
            blocked > 0,
            "the socket never filled; the test proves nothing"
        );
        assert_eq!(out.file_progress(), (file_data.len() as u64, true));
        server.shutdown_write();
        let got = client_thread.join().unwrap();
        let mut expected = vec![b'z'; taken];
        expected.extend_from_slice(b"head");
        expected.extend_from_slice(&big);
        expected.extend_from_slice(&file_data);
        assert_eq!(got.len(), expected.len());
        assert!(got == expected, "bytes out of order");
    }
}
