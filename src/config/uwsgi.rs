//! The protocol the listeners speak: Gunicorn's `--protocol` (HTTP, or uwsgi behind
//! nginx's `uwsgi_pass`) and `--uwsgi-allow-from`, the peers that may speak uwsgi.
//! Parsing only; the packets are read by `http::uwsgi`, the peers checked at accept.

use super::values::{parse_allow_ips, AllowIps};

#[derive(Debug, Clone, clap::Args)]
pub struct ProtocolArgs {
    /// The protocol every connection speaks: http, or uwsgi (the binary protocol of
    /// nginx's uwsgi_pass; the response is HTTP/1.1, never chunked).
    #[arg(long = "protocol", value_name = "STRING", default_value = "http", value_parser = ["http", "uwsgi"])]
    pub protocol: String,

    /// Peers allowed to send uwsgi requests: comma-separated IP addresses, or `*`.
    /// Unix-socket peers always are; others are closed at once.
    #[arg(long = "uwsgi-allow-from", value_name = "STRING", default_value = "127.0.0.1,::1", value_parser = parse_allow_ips)]
    pub uwsgi_allow_from: AllowIps,
}

impl ProtocolArgs {
    /// `--protocol uwsgi`: the peers allowed to speak it. None: connections speak HTTP.
    pub fn uwsgi_peers(&self) -> Option<AllowIps> {
        (self.protocol == "uwsgi").then(|| self.uwsgi_allow_from.clone())
    }

    /// These settings as `rgunctl config` and `--print-config` show them.
    pub fn settings_json(&self) -> serde_json::Map<String, serde_json::Value> {
        let mut m = serde_json::Map::new();
        m.insert("protocol".into(), self.protocol.clone().into());
        m.insert(
            "uwsgi_allow_ips".into(),
            self.uwsgi_allow_from.to_text().into(),
        );
        m
    }
}
