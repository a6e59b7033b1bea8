//! HTTP/2 clients a test holds (h2 over a tokio runtime of its own).

use std::time::Duration;

/// An h2c client that announces a zero stream window and never opens it, and the
/// response head it waited for; the stream stays open while this lives.
pub struct ZeroWindowClient {
    _held: (
        h2::client::SendRequest<bytes::Bytes>,
        http::Response<h2::RecvStream>,
    ),
    _runtime: tokio::runtime::Runtime,
}

/// Asks for `path` over h2c with a zero stream window, waits (10 s at most) for the
/// response head, which must be a 200, then for `hold` more.
pub fn zero_window_get(port: u16, path: &str, hold: Duration) -> ZeroWindowClient {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let uri = format!("http://127.0.0.1{path}");
    let held = runtime.block_on(async {
        let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .unwrap();
        let (send, conn) = h2::client::Builder::new()
            .initial_window_size(0)
            .handshake::<_, bytes::Bytes>(tcp)
            .await
            .unwrap();
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let mut send = send.ready().await.unwrap();
        let req = http::Request::get(uri).body(()).unwrap();
        let (response, _) = send.send_request(req, true).unwrap();
        let response = tokio::time::timeout(Duration::from_secs(10), response)
            .await
            .expect("the head comes despite the zero window")
            .unwrap();
        assert_eq!(response.status(), 200);
        tokio::time::sleep(hold).await;
        (send, response)
    });
    ZeroWindowClient {
        _held: held,
        _runtime: runtime,
    }
}
