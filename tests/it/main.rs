//! rgun's integration tests: one binary, one module per area. Every test starts a real
//! `rgun` process (see `support`) and talks to it over real sockets.

mod support;

mod asgi;
mod cli;
mod compat;
mod config;
mod conformance;
mod control;
mod faults;
mod fleet;
mod frameworks;
mod hostile;
mod http2;
mod hygiene;
mod lifecycle;
mod limits;
mod observability;
mod packaging;
mod startup;
mod tls;
mod uwsgi;
mod wsgi;
