//! `RequestInfo`: what an application bridge is told about one request, whatever
//! carried it (an HTTP/1 connection, an HTTP/2 stream) — the head, the two ends of
//! the connection and the scheme decision. The WSGI environ and the ASGI scope are
//! both built from it. No I/O and no Python here.

use super::forwarder::ForwarderHeaders;
use super::head::RequestHead;
use crate::net::{Local, Peer};

/// Everything the environ or the scope needs about one request.
pub struct RequestInfo<'a> {
    pub head_bytes: &'a [u8],
    pub head: &'a RequestHead,
    pub peer: &'a Peer,
    pub local: &'a Local,
    /// The request came over HTTPS (our own TLS, or a trusted proxy's word).
    pub https: bool,
    /// The TLS client certificate's subject (RFC 4514), as `SSL_CLIENT_S_DN`.
    pub client_subject: Option<&'a str>,
    /// The names with `_` a trusted peer may set (`--forwarder-headers`).
    pub forwarder_headers: &'a ForwarderHeaders,
}
