//! Dirty arbiters (Gunicorn 25+): a pool of stateful processes for heavy work that
//! HTTP workers call through Gunicorn's own `gunicorn.dirty` client. rgun speaks the
//! arbiter's side of that protocol (`frame`, `tlv`, `errors`): the `router` process
//! owns the socket `GUNICORN_DIRTY_SOCKET` names and routes calls; each dirty `worker`
//! holds the apps its index is allotted and runs their calls. The master forks both
//! and supervises them (`master::dirty`).
//!
//! Invariant: no Gunicorn code runs on rgun's side; the applications import
//! `gunicorn.dirty` (for `DirtyApp`, the client, the stash) as they do under Gunicorn.

pub mod errors;
pub mod frame;
mod pyvalue;
pub mod router;
pub mod tlv;
pub mod worker;

/// The request id of a worker's hello (a status frame listing the apps it holds),
/// on its link to the router.
pub const HELLO_ID: u64 = 0;
/// The request id of a worker's goodbye (it was told to stop): no new calls.
pub const BYE_ID: u64 = 1;
