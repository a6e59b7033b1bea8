//! `Outbox`: what a response has produced and the socket has not yet taken, in wire
//! order — bytes copied into a buffer (heads, small or framed chunks), then large
//! immutable pieces sent from where they already are, then a file range for
//! sendfile(2). Filled by whoever produces the response (with the GIL, possibly on a
//! pool thread), flushed only by the event loop through the `Transport`.

use std::collections::VecDeque;
use std::io::{self, IoSlice};
use std::os::fd::{AsRawFd, OwnedFd};

use super::transport::Transport;

/// Most pieces in one vectored write.
const MAX_IOV: usize = 16;
/// Largest single sendfile(2) call.
const SENDFILE_CHUNK_BYTES: usize = 1024 * 1024;

/// Bytes owned elsewhere (e.g. a Python `bytes` object) that stay valid and unchanged
/// for as long as the piece lives, and may be read from any thread.
pub trait SharedBytes: Send {
    fn bytes(&self) -> &[u8];
}

/// In unit tests, a piece may be plain owned bytes.
#[cfg(test)]
impl SharedBytes for Vec<u8> {
    fn bytes(&self) -> &[u8] {
        self
    }
}

/// A file to send from `offset`, `remaining` bytes at most (to its end if fewer).
struct FileSpan {
    fd: OwnedFd,
    offset: u64,
    remaining: u64,
}

#[derive(Default)]
pub struct Outbox {
    /// Copied bytes; `pos` of them are already sent.
    pub buf: Vec<u8>,
    pos: usize,
    /// Follow `buf` on the wire: (piece, next byte, end).
    pieces: VecDeque<(Box<dyn SharedBytes>, usize, usize)>,
    /// Follows the pieces.
    file: Option<FileSpan>,
    /// File bytes sent so far.
    file_sent: u64,
    /// The file ended before `remaining` was sent.
    file_short: bool,
}

impl Outbox {
    /// An outbox whose buffer is `buf` (emptied): a connection's buffer reused.
    pub fn with_buffer(mut buf: Vec<u8>) -> Outbox {
        buf.clear();
        Outbox {
            buf,
            ..Outbox::default()
        }
    }

    /// Copied bytes not yet sent (what a producer compares with its high-water mark).
    pub fn buffered(&self) -> usize {
        self.buf.len() - self.pos
    }

    /// Nothing left to send.
    pub fn is_empty(&self) -> bool {
        self.buffered() == 0 && self.pieces.is_empty() && self.file.is_none()
    }

    /// Queues `bytes[start..end]` after everything queued so far. Once a piece or a
    /// file is queued, `buf` must not grow (it would go out of order).
    pub fn push_shared(&mut self, bytes: Box<dyn SharedBytes>, start: usize, end: usize) {
        debug_assert!(self.file.is_none());
        if start < end {
            self.pieces.push_back((bytes, start, end));
        }
    }

    /// Queues up to `len` bytes of `fd` from `offset`, last.
    pub fn push_file(&mut self, fd: OwnedFd, offset: u64, len: u64) {
        self.file = Some(FileSpan {
            fd,
            offset,
            remaining: len,
        });
    }

    /// File bytes sent, and whether the file ended short of what was queued.
    pub fn file_progress(&self) -> (u64, bool) {
        (self.file_sent, self.file_short)
    }

    /// Gives the buffer back (emptied) for the connection's next response.
    pub fn take_buffer(&mut self) -> Vec<u8> {
        self.pos = 0;
        let mut buf = std::mem::take(&mut self.buf);
        buf.clear();
        buf
    }

    /// Sends until everything is gone (`Ok`) or the socket is full (`WouldBlock`).
    /// In TLS, gone means on the wire, not only encrypted.
    pub fn flush(&mut self, t: &mut Transport) -> io::Result<()> {
        while self.buffered() > 0 || !self.pieces.is_empty() {
            let sent = if self.pieces.is_empty() {
                t.write(&self.buf[self.pos..])
            } else {
                self.write_pieces(t)
            };
            match sent {
                Ok(n) => self.advance(n),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        self.buf.clear();
        self.pos = 0;
        while let Some(file) = &mut self.file {
            if file.remaining == 0 {
                self.file = None;
                break;
            }
            let count = file.remaining.min(SENDFILE_CHUNK_BYTES as u64) as usize;
            match t.send_file(file.fd.as_raw_fd(), &mut file.offset, count) {
                Ok(0) => {
                    self.file_short = true;
                    self.file = None;
                }
                Ok(n) => {
                    file.remaining -= n as u64;
                    self.file_sent += n as u64;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        // What TLS encrypted but the socket has not taken yet.
        t.flush_pending()
    }

    fn write_pieces(&self, t: &mut Transport) -> io::Result<usize> {
        let mut iov = [IoSlice::new(&[]); MAX_IOV];
        let mut count = 0;
        if self.buffered() > 0 {
            iov[0] = IoSlice::new(&self.buf[self.pos..]);
            count = 1;
        }
        for (piece, start, end) in self.pieces.iter().take(MAX_IOV - count) {
            iov[count] = IoSlice::new(&piece.bytes()[*start..*end]);
            count += 1;
        }
        t.write_vectored(&iov[..count])
    }

    /// Marks `n` bytes sent: from `buf` first, then from the pieces in order.
    fn advance(&mut self, mut n: usize) {
        let from_buf = n.min(self.buffered());
        self.pos += from_buf;
        n -= from_buf;
        while n > 0 {
            let Some(front) = self.pieces.front_mut() else {
                break;
            };
            let left = front.2 - front.1;
            if n < left {
                front.1 += n;
                break;
            }
            n -= left;
            self.pieces.pop_front();
        }
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
        (Transport::new(socket2::Socket::from(OwnedFd::from(a))), b)
    }

    #[test]
    fn buffer_pieces_and_file_go_out_in_order_through_a_full_socket() {
        let (mut t, mut peer) = pair();
        let mut file = tempfile::tempfile().unwrap();
        let file_data: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        file.write_all(&file_data).unwrap();
        let mut out = Outbox::default();
        out.buf.extend_from_slice(b"HEAD\r\n");
        let big: Vec<u8> = (0..500_000u32).map(|i| (i % 13) as u8).collect();
        out.push_shared(Box::new(big.clone()), 10, big.len());
        out.push_shared(Box::new(b"tail".to_vec()), 0, 4);
        out.push_file(OwnedFd::from(file), 100, 1 << 40);
        let mut expected = b"HEAD\r\n".to_vec();
        expected.extend_from_slice(&big[10..]);
        expected.extend_from_slice(b"tail");
        expected.extend_from_slice(&file_data[100..]);
        let reader = std::thread::spawn(move || {
            let mut got = Vec::new();
            let mut chunk = [0u8; 7000];
            loop {
                // A slow reader: the outbox meets a full socket many times.
                std::thread::sleep(std::time::Duration::from_micros(50));
                match peer.read(&mut chunk) {
                    Ok(0) => return got,
                    Ok(n) => got.extend_from_slice(&chunk[..n]),
                    Err(e) => panic!("{e}"),
                }
            }
        });
        let mut blocked = 0;
        loop {
            match out.flush(&mut t) {
                Ok(()) => break,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    blocked += 1;
                    std::thread::sleep(std::time::Duration::from_micros(200));
                }
                Err(e) => panic!("{e}"),
            }
        }
        assert!(out.is_empty());
        assert_eq!(out.file_progress(), (file_data.len() as u64 - 100, true));
        t.shutdown_write();
        let got = reader.join().unwrap();
        assert!(
            blocked > 0,
            "the socket never filled; the test proves nothing"
        );
        assert_eq!(got.len(), expected.len());
        assert!(got == expected, "bytes out of order");
    }
}
