//! TLS (`--certfile`/`--keyfile`, rustls inside the worker's transport) over real
//! sockets, with a CA, server and client certificates each test makes (rcgen) and
//! rustls as the client: a verified chain, TLS 1.3 and 1.2 negotiated, keep-alive and
//! pipelining, large bodies both ways (in memory and through the file path), client
//! certificates required and optional (the subject in `SSL_CLIENT_S_DN`), session
//! resumption across workers, a renewed certificate after `rgunctl reload`, key
//! formats. `tls::hostile`: the handshake's slow clients, plain HTTP and TLS 1.1 on the
//! TLS port, bad files at start-up.

mod hostile;

use std::io::{BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, ClientConnection, StreamOwned};

use crate::support::{read_response, Response, Server, ServerBuilder};

/// A CA, a server certificate for localhost/127.0.0.1 and a client certificate for
/// `CN=alice,O=rgun tests`, all as PEM files in a temporary directory.
pub struct Pki {
    pub dir: tempfile::TempDir,
    ca: rcgen::Certificate,
    ca_key: rcgen::KeyPair,
    pub server_der: CertificateDer<'static>,
    client_der: CertificateDer<'static>,
    client_key: PrivateKeyDer<'static>,
}

fn leaf(
    names: &[&str],
    cn: &str,
    ca: &rcgen::Certificate,
    ca_key: &rcgen::KeyPair,
) -> (rcgen::Certificate, rcgen::KeyPair) {
    let mut params =
        rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
            .unwrap();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(rcgen::DnType::OrganizationName, "rgun tests");
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, cn);
    let key = rcgen::KeyPair::generate().unwrap();
    (params.signed_by(&key, ca, ca_key).unwrap(), key)
}

impl Pki {
    pub fn new() -> Pki {
        let dir = tempfile::tempdir().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "rgun test CA");
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let ca = params.self_signed(&ca_key).unwrap();
        std::fs::write(dir.path().join("ca.pem"), ca.pem()).unwrap();
        let (client, client_key) = leaf(&[], "alice", &ca, &ca_key);
        let mut pki = Pki {
            dir,
            server_der: CertificateDer::from(Vec::new()),
            client_der: client.der().clone(),
            client_key: PrivateKeyDer::try_from(client_key.serialize_der()).unwrap(),
            ca,
            ca_key,
        };
        pki.renew_server("first");
        pki
    }

    /// (Re)writes server.pem/server.key with a new key and certificate named `cn`.
    pub fn renew_server(&mut self, cn: &str) {
        let (cert, key) = leaf(&["localhost", "127.0.0.1"], cn, &self.ca, &self.ca_key);
        std::fs::write(self.path("server.pem"), cert.pem()).unwrap();
        std::fs::write(self.path("server.key"), key.serialize_pem()).unwrap();
        self.server_der = cert.der().clone();
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// `--certfile server.pem --keyfile server.key`.
    pub fn server_args(&self) -> Vec<String> {
        vec![
            "--certfile".into(),
            self.path("server.pem").display().to_string(),
            "--keyfile".into(),
            self.path("server.key").display().to_string(),
        ]
    }

    /// A client trusting only the test CA; with the client certificate if `identify`.
    pub fn client(
        &self,
        versions: &[&'static rustls::SupportedProtocolVersion],
        identify: bool,
    ) -> Arc<ClientConfig> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.ca.der().clone()).unwrap();
        let builder =
            ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_protocol_versions(versions)
                .unwrap()
                .with_root_certificates(roots);
        let config = if identify {
            builder
                .with_client_auth_cert(vec![self.client_der.clone()], self.client_key.clone_key())
                .unwrap()
        } else {
            builder.with_no_client_auth()
        };
        Arc::new(config)
    }
}

pub type Tls = StreamOwned<ClientConnection, TcpStream>;

/// A TLS connection to the server, handshake completed (or its error).
pub fn connect(server: &Server, config: &Arc<ClientConfig>) -> std::io::Result<Tls> {
    let tcp = server.connect();
    let conn = ClientConnection::new(
        Arc::clone(config),
        ServerName::try_from("localhost").unwrap(),
    )
    .unwrap();
    let mut tls = StreamOwned::new(conn, tcp);
    while tls.conn.is_handshaking() {
        tls.conn.complete_io(&mut tls.sock)?;
    }
    Ok(tls)
}

pub fn get(tls: &mut Tls, path: &str) -> std::io::Result<Response> {
    tls.write_all(format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n").as_bytes())?;
    tls.flush()?;
    let mut r = BufReader::new(tls);
    read_response(&mut r, false).ok_or_else(|| std::io::ErrorKind::UnexpectedEof.into())
}

fn tls13() -> &'static [&'static rustls::SupportedProtocolVersion] {
    static TLS13: [&rustls::SupportedProtocolVersion; 1] = [&rustls::version::TLS13];
    &TLS13
}

fn start(pki: &Pki, app: &str, extra: &[&str]) -> Server {
    ServerBuilder::new(app)
        .args(pki.server_args())
        .args(extra.iter().copied())
        .start()
}

#[test]
fn https_with_a_verified_chain_tls13_and_tls12() {
    let pki = Pki::new();
    let server = start(&pki, "echo:application", &[]);
    let mut tls = connect(&server, &pki.client(tls13(), false)).unwrap();
    assert_eq!(
        tls.conn.protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_3)
    );
    assert_eq!(tls.conn.alpn_protocol(), None);
    let r = get(&mut tls, "/hello?x=1").unwrap();
    assert_eq!(r.status, 200);
    let echo = r.json();
    assert_eq!(echo["scheme"], "https");
    assert_eq!(echo["query"], "x=1");
    assert_eq!(echo["client_dn"], serde_json::Value::Null);
    assert_eq!(tls.conn.peer_certificates().unwrap()[0], pki.server_der);

    let mut tls12 = connect(&server, &pki.client(&[&rustls::version::TLS12], false)).unwrap();
    assert_eq!(
        tls12.conn.protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_2)
    );
    assert_eq!(get(&mut tls12, "/").unwrap().json()["scheme"], "https");
    // Plain HTTP/1.1 offered by ALPN is what we pick.
    let mut alpn = (*pki.client(tls13(), false)).clone();
    alpn.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let tls = connect(&server, &Arc::new(alpn)).unwrap();
    assert_eq!(tls.conn.alpn_protocol(), Some(&b"http/1.1"[..]));
}

#[test]
fn keep_alive_and_pipelining_over_tls() {
    let pki = Pki::new();
    let server = start(&pki, "hostile_app:application", &[]);
    let mut tls = connect(&server, &pki.client(tls13(), false)).unwrap();
    for _ in 0..3 {
        let r = get(&mut tls, "/ping").unwrap();
        assert_eq!((r.status, r.text().as_str()), (200, "pong"));
    }
    // Twenty requests in one write (so in a few TLS records), answered in order.
    let mut burst = Vec::new();
    for i in 0..20 {
        burst.extend_from_slice(
            format!("GET /work?ms=0&i={i} HTTP/1.1\r\nHost: localhost\r\n\r\n").as_bytes(),
        );
    }
    burst.extend_from_slice(b"GET /ping HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    tls.write_all(&burst).unwrap();
    tls.flush().unwrap();
    let mut r = BufReader::new(&mut tls);
    for _ in 0..20 {
        let resp = read_response(&mut r, false).expect("a pipelined response");
        assert_eq!((resp.status, resp.text().as_str()), (200, "done"));
    }
    let last = read_response(&mut r, false).expect("the last response");
    assert_eq!(last.text(), "pong");
    // Connection: close ends in a close_notify, a clean end of stream.
    let mut rest = Vec::new();
    assert_eq!(r.read_to_end(&mut rest).unwrap(), 0);
}

#[test]
fn large_bodies_both_ways() {
    use sha2::{Digest, Sha256};
    let pki = Pki::new();
    let server = start(&pki, "hostile_app:application", &["--threads", "2"]);
    let mut tls = connect(&server, &pki.client(tls13(), false)).unwrap();
    let upload: Vec<u8> = (0..(20u32 << 20)).map(|i| (i % 251) as u8).collect();
    tls.write_all(
        format!(
            "POST /digest HTTP/1.1\r\nHost: localhost\r\nContent-Length: {}\r\n\r\n",
            upload.len()
        )
        .as_bytes(),
    )
    .unwrap();
    tls.write_all(&upload).unwrap();
    tls.flush().unwrap();
    let r = read_response(&mut BufReader::new(&mut tls), false).unwrap();
    let expected = format!("{} {:x}", upload.len(), Sha256::digest(&upload));
    assert!(r.text().starts_with(&expected), "{}", r.text());
    // 32 MiB from one in-memory bytes object, read slowly at first.
    tls.write_all(b"GET /big HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .unwrap();
    tls.flush().unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let r = read_response(&mut BufReader::new(&mut tls), false).unwrap();
    assert_eq!(r.body.len(), 32 << 20);
    assert!(r.body.iter().all(|b| *b == b'y'));
    // A streamed (chunked) response on the same connection.
    let r = get(&mut tls, "/stream?n=64").unwrap();
    assert_eq!(r.body.len(), 64 * 65536);
}

#[test]
fn a_file_wrapper_response_goes_through_tls_in_chunks() {
    let pki = Pki::new();
    let data: Vec<u8> = (0..(3u32 << 20) + 12345).map(|i| (i % 253) as u8).collect();
    let file = pki.path("payload.bin");
    std::fs::write(&file, &data).unwrap();
    let server = ServerBuilder::new("pep3333:application")
        .args(pki.server_args())
        .env("RGUN_TEST_FILE", &file.display().to_string())
        .start();
    let mut tls = connect(&server, &pki.client(tls13(), false)).unwrap();
    let r = get(&mut tls, "/file").unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.body.len(), data.len());
    assert!(r.body == data, "file bytes differ");
}

#[test]
fn client_certificates_required() {
    let pki = Pki::new();
    let ca = pki.path("ca.pem").display().to_string();
    let server = start(
        &pki,
        "echo:application",
        &["--ca-certs", &ca, "--cert-reqs", "2"],
    );
    let mut tls = connect(&server, &pki.client(tls13(), true)).unwrap();
    let echo = get(&mut tls, "/").unwrap().json();
    assert_eq!(echo["client_dn"], "CN=alice,O=rgun tests");
    assert_eq!(echo["scheme"], "https");
    // Without one: refused (in TLS 1.3 the alert arrives after the client's Finished).
    let refused = connect(&server, &pki.client(tls13(), false)).and_then(|mut t| get(&mut t, "/"));
    assert!(refused.is_err(), "served without a client certificate");
    let refused12 = connect(&server, &pki.client(&[&rustls::version::TLS12], false))
        .and_then(|mut t| get(&mut t, "/"));
    assert!(
        refused12.is_err(),
        "served TLS 1.2 without a client certificate"
    );
    assert!(server.child_alive());
}

#[test]
fn client_certificates_optional() {
    let pki = Pki::new();
    let ca = pki.path("ca.pem").display().to_string();
    let server = start(
        &pki,
        "echo:application",
        &["--ca-certs", &ca, "--cert-reqs", "1"],
    );
    let mut with = connect(&server, &pki.client(tls13(), true)).unwrap();
    assert_eq!(
        get(&mut with, "/").unwrap().json()["client_dn"],
        "CN=alice,O=rgun tests"
    );
    let mut without = connect(&server, &pki.client(tls13(), false)).unwrap();
    assert_eq!(
        get(&mut without, "/").unwrap().json()["client_dn"],
        serde_json::Value::Null
    );
}

#[test]
fn sessions_resume_across_workers() {
    let pki = Pki::new();
    let server = ServerBuilder::new("echo:application")
        .args(pki.server_args())
        .workers(3)
        .start();
    for versions in [tls13(), &[&rustls::version::TLS12][..]] {
        let config = pki.client(versions, false);
        let mut first = connect(&server, &config).unwrap();
        get(&mut first, "/").unwrap();
        drop(first);
        // Held open, so new connections go to the other workers too.
        let mut held = Vec::new();
        let mut pids = std::collections::BTreeSet::new();
        for _ in 0..9 {
            let mut tls = connect(&server, &config).unwrap();
            let pid = get(&mut tls, "/").unwrap().json()["pid"].as_i64().unwrap();
            assert_eq!(
                tls.conn.handshake_kind(),
                Some(rustls::HandshakeKind::Resumed),
                "a fresh handshake with worker {pid} ({versions:?})"
            );
            pids.insert(pid);
            held.push(tls);
        }
        assert!(
            pids.len() >= 2,
            "all connections went to one worker: {pids:?}"
        );
    }
}

/// `rgunctl reload`, which must succeed, then waits until only the new generation is left.
fn reload_to_the_new_generation(server: &Server) {
    crate::support::ctl(server, &["reload"]).assert_ok("reload");
    server.wait_for_the_old_workers_to_go();
}

#[test]
fn a_renewed_certificate_is_served_after_rgunctl_reload() {
    let mut pki = Pki::new();
    let server = start(&pki, "echo:application", &[]);
    let config = pki.client(tls13(), false);
    let before = connect(&server, &config).unwrap();
    assert_eq!(before.conn.peer_certificates().unwrap()[0], pki.server_der);
    // (Held open, it would keep its old worker until the graceful timeout.)
    drop(before);
    pki.renew_server("second");
    reload_to_the_new_generation(&server);
    let mut after = connect(&server, &config).unwrap();
    assert_eq!(after.conn.peer_certificates().unwrap()[0], pki.server_der);
    assert_eq!(get(&mut after, "/").unwrap().status, 200);
    // A reload whose key no longer fits fails and keeps the serving generation.
    std::fs::write(
        pki.path("server.key"),
        rcgen::KeyPair::generate().unwrap().serialize_pem(),
    )
    .unwrap();
    let out = crate::support::ctl(&server, &["reload"]);
    assert_ne!(out.code, Some(0));
    let text = out.stdout + &out.stderr;
    assert!(text.contains("does not fit"), "{text}");
    let mut still = connect(&server, &config).unwrap();
    assert_eq!(get(&mut still, "/").unwrap().status, 200);
}

/// Runs a Python snippet with the test venv's interpreter (the `cryptography` package
/// writes RSA PKCS#1 and EC SEC1 keys, which rcgen does not).
fn python(code: &str, dir: &Path) {
    crate::support::venv_python(code, &[], dir);
}

#[test]
fn pkcs1_rsa_and_sec1_ec_keys() {
    let dir = tempfile::tempdir().unwrap();
    python(
        r#"
import datetime
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID
now = datetime.datetime.now(datetime.timezone.utc)
for name, key in (("rsa", rsa.generate_private_key(65537, 2048)), ("ec", ec.generate_private_key(ec.SECP256R1()))):
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1)).not_valid_after(now + datetime.timedelta(days=2))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
            .sign(key, hashes.SHA256()))
    open(name + ".pem", "wb").write(cert.public_bytes(serialization.Encoding.PEM))
    open(name + ".key", "wb").write(key.private_bytes(serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption()))
"#,
        dir.path(),
    );
    for (name, marker) in [
        ("rsa", "BEGIN RSA PRIVATE KEY"),
        ("ec", "BEGIN EC PRIVATE KEY"),
    ] {
        let key = dir.path().join(format!("{name}.key"));
        assert!(std::fs::read_to_string(&key).unwrap().contains(marker));
        let cert = dir.path().join(format!("{name}.pem"));
        let server = ServerBuilder::new("echo:application")
            .args(["--certfile", &cert.display().to_string()])
            .args(["--keyfile", &key.display().to_string()])
            .start();
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(CertificateDer::from_pem_file(&cert).unwrap())
            .unwrap();
        let config = Arc::new(
            ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_root_certificates(roots)
                .with_no_client_auth(),
        );
        let mut tls = connect(&server, &config).unwrap();
        assert_eq!(get(&mut tls, "/").unwrap().status, 200, "{name}");
    }
}

#[test]
fn asgi_over_tls_scope_scheme_and_a_websocket() {
    let pki = Pki::new();
    let server = start(&pki, "asgi_app:app", &["-k", "asgi"]);
    let config = pki.client(tls13(), false);
    let mut tls = connect(&server, &config).unwrap();
    let scope = get(&mut tls, "/scope").unwrap().json();
    assert_eq!(scope["scheme"], "https", "{scope}");
    // A WebSocket inside TLS: the handshake, one masked text frame, its echo.
    let mut ws = connect(&server, &config).unwrap();
    ws.write_all(
        b"GET /ws/echo HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
          Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
    )
    .unwrap();
    ws.flush().unwrap();
    let mut r = BufReader::new(&mut ws);
    let head = read_response(&mut r, true).unwrap();
    assert_eq!(head.status, 101);
    drop(r);
    let mask = [1u8, 2, 3, 4];
    let mut frame = vec![0x81, 0x80 | 5];
    frame.extend_from_slice(&mask);
    frame.extend(b"hello".iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    ws.write_all(&frame).unwrap();
    ws.flush().unwrap();
    let mut echo = [0u8; 7];
    ws.read_exact(&mut echo).unwrap();
    assert_eq!(&echo, b"\x81\x05hello");
}

#[test]
fn a_root_only_key_is_read_by_the_master_before_workers_drop_privileges() {
    use std::os::unix::fs::PermissionsExt;
    if !crate::support::running_as_root("a_root_only_key_is_read_by_the_master") {
        return;
    }
    let pki = Pki::new();
    // The key (mode 0400) in the test's 0700 directory: only root can read it.
    std::fs::set_permissions(
        pki.path("server.key"),
        std::fs::Permissions::from_mode(0o400),
    )
    .unwrap();
    let world_can_reach = |p: &Path| {
        p.ancestors()
            .all(|a| std::fs::metadata(a).is_ok_and(|m| m.permissions().mode() & 0o001 != 0))
    };
    let python = crate::support::venv().join("bin").join("python");
    let stdlib = std::process::Command::new(&python)
        .args([
            "-c",
            "import sysconfig; print(sysconfig.get_paths()['stdlib'])",
        ])
        .output()
        .unwrap();
    let stdlib = PathBuf::from(String::from_utf8_lossy(&stdlib.stdout).trim());
    // As in hygiene::workers_drop_privileges_when_root: with a Python nobody cannot
    // read (pyenv under /root), drop the group only.
    let nobody_works = world_can_reach(&stdlib)
        && world_can_reach(&crate::support::repo_root().join("tests/apps"))
        && world_can_reach(&crate::support::venv());
    let identity: &[&str] = if nobody_works {
        &["-u", "nobody", "-g", "nogroup"]
    } else {
        &["-g", "nogroup"]
    };
    let server = start(&pki, "echo:application", identity);
    if nobody_works {
        let uids = crate::support::proc_ids(server.worker_pids()[0], "Uid:");
        assert!(uids.iter().all(|u| *u != "0"), "{uids:?}");
    }
    let mut tls = connect(&server, &pki.client(tls13(), false)).unwrap();
    assert_eq!(get(&mut tls, "/").unwrap().status, 200);
}

#[test]
fn sessions_resume_across_a_reload() {
    let pki = Pki::new();
    let server = start(&pki, "echo:application", &[]);
    let config = pki.client(tls13(), false);
    let mut first = connect(&server, &config).unwrap();
    let old_pid = get(&mut first, "/").unwrap().json()["pid"].clone();
    drop(first);
    reload_to_the_new_generation(&server);
    // A ticket from the old generation opens in the new one (the keys are the master's).
    let mut tls = connect(&server, &config).unwrap();
    let pid = get(&mut tls, "/").unwrap().json()["pid"].clone();
    assert_ne!(pid, old_pid, "still the old worker");
    assert_eq!(
        tls.conn.handshake_kind(),
        Some(rustls::HandshakeKind::Resumed)
    );
}
