//! The dirty pool under the master (`--dirty-app`, `--dirty-workers`): `pool` owns
//! its processes and starts them, `supervise` keeps them to the target and judges
//! their exits, `generations` carries the pool through reloads and the stop, `report`
//! says what `status`, `/metrics` and statsd show of it. The router and the dirty
//! workers themselves are `crate::dirty`'s.
//!
//! Invariant: the master imports no dirty app and routes no call; it forks, counts,
//! times out and replaces.

mod generations;
mod pool;
mod report;
mod supervise;

pub(super) use pool::{DirtyPool, TOKEN_BASE};
