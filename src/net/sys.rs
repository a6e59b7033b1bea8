//! The raw socket calls under `Transport` and `TlsStream`: recv(2), send(2) and
//! sendmsg(2) on a descriptor, as `io::Result`s with the kernel's errors. Knows no
//! TLS and no connection; the `unsafe` of the client-socket I/O lives here.

use std::io::{self, IoSlice};
use std::os::fd::RawFd;

/// One recv(2) into `buf`'s spare capacity, at least `want` bytes of it.
pub(super) fn recv_into(fd: RawFd, buf: &mut Vec<u8>, want: usize) -> io::Result<usize> {
    buf.reserve(want);
    let spare = buf.spare_capacity_mut();
    // SAFETY: recv writes at most `spare.len()` bytes into the vector's spare
    // capacity; we only extend the length by what the kernel reports written.
    let n = unsafe { libc::recv(fd, spare.as_mut_ptr().cast(), spare.len(), 0) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    let n = n as usize;
    // SAFETY: the kernel initialised `n` bytes past the old length.
    unsafe { buf.set_len(buf.len() + n) };
    Ok(n)
}

/// One recv(2) into `buf`, with `flags` (e.g. `MSG_PEEK`).
pub(super) fn recv(fd: RawFd, buf: &mut [u8], flags: libc::c_int) -> io::Result<usize> {
    // SAFETY: recv writes at most `buf.len()` bytes into `buf`.
    let n = unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), flags) };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

/// One send(2) of `data`, without SIGPIPE.
pub(super) fn send(fd: RawFd, data: &[u8]) -> io::Result<usize> {
    // SAFETY: `data` is a valid slice for the duration of the call.
    let n = unsafe { libc::send(fd, data.as_ptr().cast(), data.len(), libc::MSG_NOSIGNAL) };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

/// One sendmsg(2) of `pieces` in order, without SIGPIPE.
pub(super) fn send_vectored(fd: RawFd, pieces: &[IoSlice<'_>]) -> io::Result<usize> {
    // SAFETY: a zeroed msghdr is valid (no name, no control data); IoSlice is
    // ABI-compatible with iovec, and the slices outlive the call.
    let n = unsafe {
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_iov = pieces.as_ptr() as *mut libc::iovec;
        msg.msg_iovlen = pieces.len() as _;
        libc::sendmsg(fd, &msg, libc::MSG_NOSIGNAL)
    };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}
