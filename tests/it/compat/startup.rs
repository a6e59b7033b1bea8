//! Start-up records beside Gunicorn's: how a listener is named (`https://` with
//! `--certfile`).

use super::{records, APP};
use crate::support::ServerBuilder;
use crate::tls::Pki;

/// `Listening at: https://127.0.0.1:PORT (PID)` with the port and pid left out.
fn listening(log: &str) -> Vec<String> {
    records(log)
        .into_iter()
        .filter_map(|r| r.lines[0].strip_prefix("Listening at: ").map(str::to_owned))
        .map(|at| {
            let (address, pid) = at.rsplit_once(" (").expect("a pid after the address");
            assert!(pid.trim_end_matches(')').parse::<u32>().is_ok(), "{at}");
            let (host, port) = address.rsplit_once(':').expect("a port");
            assert!(port.parse::<u16>().is_ok(), "{at}");
            host.to_owned()
        })
        .collect()
}

#[test]
fn a_tls_listener_is_listening_at_https_as_in_gunicorn() {
    let pki = Pki::new();
    for (tls, scheme) in [(true, "https"), (false, "http")] {
        let mut args = vec!["-b".to_owned(), "127.0.0.1:0".to_owned()];
        if tls {
            args.extend(pki.server_args());
        }
        let builder = || ServerBuilder::new(APP).own_bind().args(args.clone());
        let rgun = listening(&builder().start().log());
        let gunicorn = listening(&builder().gunicorn().start().log());
        assert_eq!(rgun, gunicorn);
        assert_eq!(rgun, [format!("{scheme}://127.0.0.1")]);
    }
}
