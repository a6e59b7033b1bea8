//! HTTP/2 over TLS by ALPN (`--http-protocols h2,h1`): a client offering h2 gets it
//! (scheme https), HTTP/1 clients on the same port are unharmed, and without the flag
//! h2 is not offered.

use std::sync::Arc;

use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

use super::{fetch, with_h2_over, APP};
use crate::support::ServerBuilder;
use crate::tls::{connect, get, Pki};

pub(super) fn h2_client(pki: &Pki, alpn: &[&[u8]]) -> Arc<rustls::ClientConfig> {
    let mut config = (*pki.client(&[&rustls::version::TLS13], false)).clone();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(config)
}

/// A TLS client connection to "localhost" over `tcp`, made with `config`.
pub(super) async fn tls_over(
    config: Arc<rustls::ClientConfig>,
    tcp: TcpStream,
) -> TlsStream<TcpStream> {
    tokio_rustls::TlsConnector::from(config)
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .expect("TLS handshake")
}

/// POSTs `secret` to `/echo` over HTTP/2 on TLS to `port`, ALPN having chosen h2;
/// returns the status, the headers and the whole body.
pub(super) fn post_secret_over_h2_by_alpn(
    port: u16,
    config: Arc<rustls::ClientConfig>,
) -> (u16, http::HeaderMap, Vec<u8>) {
    with_h2_over(
        port,
        |tcp| async move {
            let tls = tls_over(config, tcp).await;
            assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
            tls
        },
        |mut send| async move { fetch(&mut send, "POST", "/echo", &[], b"secret").await },
    )
}

#[test]
fn a_client_offering_h2_by_alpn_speaks_http2_over_tls() {
    let pki = Pki::new();
    let server = ServerBuilder::new(APP)
        .args(pki.server_args())
        .args(["--http-protocols", "h2,h1"])
        .start();
    let config = h2_client(&pki, &[b"h2", b"http/1.1"]);
    let (status, _, body) = post_secret_over_h2_by_alpn(server.port, config);
    assert_eq!(status, 201, "{}", server.log());
    let echoed: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(echoed["protocol"], "HTTP/2");
    assert_eq!(echoed["scheme"], "https");
    assert_eq!(echoed["body"], "secret");

    // An HTTP/1 client on the same port, offering http/1.1 only.
    let mut tls = connect(&server, &h2_client(&pki, &[b"http/1.1"])).unwrap();
    assert_eq!(tls.conn.alpn_protocol(), Some(&b"http/1.1"[..]));
    let r = get(&mut tls, "/echo").unwrap();
    assert_eq!(r.status, 201);
    assert_eq!(r.json()["protocol"], "HTTP/1.1");
}

#[test]
fn without_http_protocols_h2_is_not_offered() {
    let pki = Pki::new();
    let server = ServerBuilder::new(APP).args(pki.server_args()).start();
    let mut tls = connect(&server, &h2_client(&pki, &[b"h2", b"http/1.1"])).unwrap();
    assert_eq!(tls.conn.alpn_protocol(), Some(&b"http/1.1"[..]));
    let r = get(&mut tls, "/echo").unwrap();
    assert_eq!(r.json()["protocol"], "HTTP/1.1");
}
