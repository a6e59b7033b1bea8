//! The in-memory duplex an HTTP/2 connection (the `h2` crate) reads and writes instead
//! of a socket. The event loop fills its input from the `Transport` and drains its
//! output into it; `h2` sees tokio's `AsyncRead`/`AsyncWrite` and no runtime.
//!
//! Both directions are bounded: when the input is full we stop reading the socket (the
//! client's TCP window closes), and when the output is full `h2` gets `Pending` and
//! stops framing until the socket takes more. Nothing here blocks or does I/O.

use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Most socket bytes held for `h2` to read.
pub const PIPE_IN_BYTES: usize = 64 * 1024;
/// Most framed bytes held for the socket.
pub const PIPE_OUT_BYTES: usize = 256 * 1024;

#[derive(Default)]
pub struct PipeBuffers {
    /// Read from the socket, not yet taken by `h2`; `in_pos` of them are taken.
    pub input: Vec<u8>,
    pub in_pos: usize,
    /// The client closed its side.
    pub eof: bool,
    /// Framed by `h2`, not yet sent; `out_pos` of them are sent.
    pub output: Vec<u8>,
    pub out_pos: usize,
}

impl PipeBuffers {
    /// Room for more socket input.
    pub fn input_room(&self) -> usize {
        PIPE_IN_BYTES.saturating_sub(self.input.len() - self.in_pos)
    }

    /// Framed bytes waiting for the socket.
    pub fn pending_output(&self) -> &[u8] {
        &self.output[self.out_pos..]
    }

    /// `n` bytes of the pending output went out.
    pub fn consume_output(&mut self, n: usize) {
        self.out_pos += n;
        if self.out_pos == self.output.len() {
            self.output.clear();
            self.out_pos = 0;
        }
    }
}

/// One end of the duplex, owned by `h2`; the connection driver holds the other
/// (`Arc` clone of the same buffers). Both run on one thread at a time.
#[derive(Clone, Default)]
pub struct Pipe(pub Arc<Mutex<PipeBuffers>>);

impl Pipe {
    pub fn lock(&self) -> std::sync::MutexGuard<'_, PipeBuffers> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl AsyncRead for Pipe {
    fn poll_read(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let mut b = self.lock();
        let available = b.input.len() - b.in_pos;
        if available == 0 {
            // The driver polls again after every read from the socket: no waker needed.
            return if b.eof {
                Poll::Ready(Ok(()))
            } else {
                Poll::Pending
            };
        }
        let n = available.min(buf.remaining());
        let start = b.in_pos;
        buf.put_slice(&b.input[start..start + n]);
        b.in_pos += n;
        if b.in_pos == b.input.len() {
            b.input.clear();
            b.in_pos = 0;
        }
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for Pipe {
    fn poll_write(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let mut b = self.lock();
        let room = PIPE_OUT_BYTES.saturating_sub(b.output.len() - b.out_pos);
        if room == 0 {
            // The driver polls again once the socket has taken some.
            return Poll::Pending;
        }
        let n = room.min(data.len());
        b.output.extend_from_slice(&data[..n]);
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // The driver sends the output after every poll.
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}
