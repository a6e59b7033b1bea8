//! The TLS port against clients that do not play along: silent TCP connections and
//! half-sent ClientHellos (bounded by the head deadline, never delaying an honest
//! client), plain HTTP (a 400 in the clear), a TLS 1.1 ClientHello (a protocol_version
//! alert), and start-up with files or settings that cannot work (one line, exit 1).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::pki_types::ServerName;
use rustls::ClientConnection;

use super::{connect, get, start, tls13, Pki};
use crate::support::{repo_root, wait_until};

/// The first flight of a real TLS 1.3 client.
fn client_hello(pki: &Pki) -> Vec<u8> {
    let mut conn = ClientConnection::new(
        pki.client(tls13(), false),
        ServerName::try_from("localhost").unwrap(),
    )
    .unwrap();
    let mut hello = Vec::new();
    conn.write_tls(&mut hello).unwrap();
    hello
}

/// The connection was closed by the server (EOF or reset), checked without waiting.
fn closed(s: &mut TcpStream) -> bool {
    s.set_nonblocking(true).unwrap();
    let mut buf = [0u8; 4096];
    let gone = loop {
        match s.read(&mut buf) {
            Ok(0) => break true,
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break false,
            Err(_) => break true,
        }
    };
    s.set_nonblocking(false).unwrap();
    gone
}

#[test]
fn silent_and_half_hello_clients_never_delay_honest_ones_and_meet_the_deadline() {
    let pki = Pki::new();
    let server = start(&pki, "hostile_app:application", &["--timeout", "3"]);
    let hello = client_hello(&pki);
    let opened = Instant::now();
    let mut idle = Vec::new();
    for i in 0..200 {
        let mut s = server.connect();
        if i % 2 == 1 {
            // Half a ClientHello: the record header promises more than ever comes.
            s.write_all(&hello[..hello.len() / 2]).unwrap();
        }
        idle.push(s);
    }
    let config = pki.client(tls13(), false);
    for _ in 0..20 {
        let mut tls = connect(&server, &config).unwrap();
        let r = get(&mut tls, "/ping").unwrap();
        assert_eq!(r.text(), "pong");
    }
    // Every one of them is cut once the head deadline (--timeout) has passed.
    assert!(
        wait_until(Duration::from_secs(20), || idle.iter_mut().all(closed)),
        "slow handshakes still open after {:?}",
        opened.elapsed()
    );
    assert!(
        opened.elapsed() >= Duration::from_secs(2),
        "cut before the deadline"
    );
    let mut tls = connect(&server, &config).unwrap();
    assert_eq!(get(&mut tls, "/ping").unwrap().status, 200);
}

#[test]
fn plain_http_to_the_tls_port_is_answered_400_and_closed() {
    let pki = Pki::new();
    let server = start(&pki, "echo:application", &[]);
    let answer = server.exchange(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n");
    let text = String::from_utf8_lossy(&answer);
    assert!(text.starts_with("HTTP/1.1 400 "), "{text}");
    assert!(text.contains("https://"), "{text}");
    // The worker is unharmed.
    let mut tls = connect(&server, &pki.client(tls13(), false)).unwrap();
    assert_eq!(get(&mut tls, "/").unwrap().status, 200);
}

#[test]
fn tls11_and_garbage_are_refused() {
    let pki = Pki::new();
    let server = start(&pki, "echo:application", &[]);
    // A TLS 1.1 ClientHello (legacy_version 3.2, no supported_versions extension).
    let mut body = vec![0x03, 0x02];
    body.extend_from_slice(&[7u8; 32]);
    body.push(0); // session id
                  // Suites rustls has for TLS 1.2, so only the version is wrong.
    body.extend_from_slice(&[0x00, 0x04, 0xc0, 0x2b, 0xc0, 0x2f]);
    body.extend_from_slice(&[0x01, 0x00]); // null compression
                                           // signature_algorithms (ecdsa_secp256r1_sha256): without it the refusal would be
                                           // for that, not for the version.
    body.extend_from_slice(&[0x00, 0x08, 0x00, 0x0d, 0x00, 0x04, 0x00, 0x02, 0x04, 0x03]);
    let mut handshake = vec![0x01, 0x00, 0x00, body.len() as u8];
    handshake.extend_from_slice(&body);
    let mut record = vec![0x16, 0x03, 0x01, 0x00, handshake.len() as u8];
    record.extend_from_slice(&handshake);
    let answer = server.exchange(&record);
    // An alert record (21) whose description is protocol_version (70).
    assert!(
        answer.len() >= 7 && answer[0] == 0x15 && answer[6] == 70,
        "{answer:02x?}"
    );
    // A record that is no TLS at all: closed at once, nothing in the clear.
    let answer = server.exchange(&[0x16, 0x03, 0x01, 0x00, 0x01, 0xff, 0x00, 0x00]);
    assert!(answer.is_empty() || answer[0] == 0x15, "{answer:02x?}");
    let mut tls = connect(&server, &pki.client(tls13(), false)).unwrap();
    assert_eq!(get(&mut tls, "/").unwrap().status, 200);
}

/// rgun with `args`, expected to refuse to start: (exit status, stderr).
fn refused(args: &[&str]) -> (Option<i32>, String) {
    let dir = tempfile::tempdir().unwrap();
    let mut child = crate::support::rgun()
        .args(["echo:application", "-b", "127.0.0.1:0"])
        .arg("--control-socket")
        .arg(dir.path().join("ctl"))
        .args(args)
        .current_dir(repo_root())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id() as i32;
    let start = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if start.elapsed() > Duration::from_secs(20) {
            // SAFETY: killing the rgun this test started.
            unsafe { libc::kill(pid, libc::SIGKILL) };
            panic!("rgun {args:?} started instead of refusing");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn bad_tls_files_and_settings_fail_start_up_with_one_line() {
    let pki = Pki::new();
    let garbage = pki.path("garbage.key");
    std::fs::write(&garbage, "not a key\n").unwrap();
    let other_key = pki.path("other.key");
    std::fs::write(
        &other_key,
        rcgen::KeyPair::generate().unwrap().serialize_pem(),
    )
    .unwrap();
    let conf = pki.path("ssl_context.conf.py");
    std::fs::write(&conf, "def ssl_context(conf, default_ssl_context_factory):\n    return default_ssl_context_factory()\n").unwrap();
    let (cert, ca) = (
        pki.path("server.pem").display().to_string(),
        pki.path("ca.pem").display().to_string(),
    );
    let (garbage, other_key, conf) = (
        garbage.display().to_string(),
        other_key.display().to_string(),
        conf.display().to_string(),
    );
    for (args, needle) in [
        (
            vec!["--certfile", &cert, "--keyfile", &garbage],
            "garbage.key",
        ),
        (
            vec!["--certfile", &cert, "--keyfile", &other_key],
            "does not fit",
        ),
        (
            vec!["--certfile", "/nonexistent/cert.pem"],
            "/nonexistent/cert.pem",
        ),
        // The certificate file holds no key.
        (vec!["--certfile", &cert], "server.pem"),
        (
            vec![
                "--certfile",
                &cert,
                "--keyfile",
                &garbage.replace("garbage", "server"),
                "--cert-reqs",
                "2",
            ],
            "--ca-certs",
        ),
        (
            vec![
                "--certfile",
                &cert,
                "--keyfile",
                &garbage.replace("garbage", "server"),
                "--ciphers",
                "HIGH:!aNULL",
            ],
            "HIGH",
        ),
        (vec!["--keyfile", &garbage], "--certfile"),
        (
            vec!["-c", &conf, "--certfile", &cert, "--ca-certs", &ca],
            "ssl_context",
        ),
    ] {
        let (code, err) = refused(&args);
        assert_eq!(code, Some(1), "{args:?}: {err}");
        assert_eq!(err.trim_end().lines().count(), 1, "{args:?}: {err}");
        assert!(err.contains(needle), "{args:?}: {err}");
    }
}

#[test]
fn gunicorn_tls_settings_in_a_config_file() {
    let pki = Pki::new();
    let conf = pki.path("gunicorn.conf.py");
    std::fs::write(
        &conf,
        format!(
            "import ssl\ncertfile = {:?}\nkeyfile = {:?}\nca_certs = {:?}\ncert_reqs = ssl.CERT_OPTIONAL\n\
             ciphers = 'ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-ECDSA-CHACHA20-POLY1305'\n\
             ssl_version = ssl.PROTOCOL_TLSv1_2\ndo_handshake_on_connect = True\nsuppress_ragged_eofs = True\n",
            pki.path("server.pem").display().to_string(),
            pki.path("server.key").display().to_string(),
            pki.path("ca.pem").display().to_string(),
        ),
    )
    .unwrap();
    let server = crate::support::ServerBuilder::new("echo:application")
        .args(["-c", &conf.display().to_string()])
        .start();
    server.assert_log_has("`ssl_version` is deprecated");
    let mut twelve = (*pki.client(&[&rustls::version::TLS12], true)).clone();
    twelve.resumption = rustls::client::Resumption::disabled();
    let mut tls = connect(&server, &Arc::new(twelve)).unwrap();
    assert_eq!(
        tls.conn.negotiated_cipher_suite().map(|s| s.suite()),
        Some(rustls::CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256)
    );
    assert_eq!(
        get(&mut tls, "/").unwrap().json()["client_dn"],
        "CN=alice,O=rgun tests"
    );
}

#[test]
fn check_config_loads_the_tls_files_too() {
    let pki = Pki::new();
    let garbage = pki.path("garbage.key");
    std::fs::write(
        &garbage,
        "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
    )
    .unwrap();
    let cert = pki.path("server.pem").display().to_string();
    let run = |key: &str| {
        crate::support::rgun()
            .args([
                "--check-config",
                "echo:application",
                "--certfile",
                &cert,
                "--keyfile",
                key,
            ])
            .arg("--pythonpath")
            .arg(crate::support::apps_dir())
            .current_dir(repo_root())
            .stdin(Stdio::null())
            .output()
            .unwrap()
    };
    let bad = run(&garbage.display().to_string());
    let err = String::from_utf8_lossy(&bad.stderr);
    assert_eq!(bad.status.code(), Some(1), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert!(err.contains("garbage.key"), "{err}");
    let good = run(&pki.path("server.key").display().to_string());
    assert_eq!(
        good.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&good.stderr)
    );
}
