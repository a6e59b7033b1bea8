//! rgun: a pre-fork HTTP server for Python WSGI and ASGI applications, built as the
//! Python extension module `rgun._rgun`.
//!
//! `entry` (the module's functions, called by the `rgun` console script) parses the
//! command line into a [`config::Config`] and hands it to [`master::run`]; see
//! ARCHITECTURE.md for the map.

pub mod asgi;
pub mod autoscale;
pub mod config;
pub mod control;
pub mod dirty;
mod entry;
pub mod hooks;
pub mod http;
pub mod loader;
pub mod log;
pub mod master;
pub mod net;
pub mod process;
pub mod python;
pub mod scoreboard;
pub mod signals;
pub mod sizing;
pub mod statsd;
pub mod syslog;
pub mod worker;
pub mod wsgi;
