//! rgun: a pre-fork HTTP server for Python WSGI and ASGI applications.
//!
//! `main.rs` parses the command line into a [`config::Config`] and hands it to
//! [`master::run`]; see ARCHITECTURE.md for the map.

pub mod asgi;
pub mod config;
pub mod control;
pub mod hooks;
pub mod http;
pub mod log;
pub mod master;
pub mod net;
pub mod process;
pub mod python;
pub mod scoreboard;
pub mod signals;
pub mod worker;
pub mod wsgi;
