//! `rgunctl`: the control protocol shared by the rgun daemon and its command-line
//! client. Types, framing and a blocking client; no Python and no daemon code, so the
//! client builds anywhere.

/// `writeln!` into the output being assembled (a `String`, which cannot fail); defined
/// before the modules, so every module of the crate has it.
macro_rules! w {
    ($out:expr, $($arg:tt)*) => {{
        use std::fmt::Write as _;
        let _ = writeln!($out, $($arg)*);
    }};
}

pub mod cli;
pub mod client;
mod clock;
pub mod gunicorn;
pub mod protocol;
pub mod socket_path;
mod stacks;
mod top;
mod watch;

pub use client::{Client, ClientError};
pub use protocol::{Command, ErrorBody, ErrorCode, HistoryEntry, Status};
