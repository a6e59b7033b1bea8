//! The HTTP/2 settings, Gunicorn 25's names. HTTP/2 is off unless asked for:
//! `--http-protocols h2,h1` offers it by ALPN on TLS listeners, `--http2-cleartext`
//! serves it to clients that open with the HTTP/2 preface on a plain listener (prior
//! knowledge, "h2c"). HTTP/1 clients are served as before either way.

use crate::http::h2::H2Settings;

#[derive(Debug, Clone, clap::Args)]
pub struct Http2Args {
    /// Protocols offered over TLS by ALPN, in order of preference: h1, h2, or both
    /// comma-separated (h2,h1).
    #[arg(long = "http-protocols", value_name = "LIST", default_value = "h1", value_parser = parse_protocols)]
    pub http_protocols: Protocols,

    /// Serve HTTP/2 with prior knowledge (h2c) on plain listeners: a connection that
    /// opens with the HTTP/2 preface speaks HTTP/2, any other HTTP/1.
    #[arg(long = "http2-cleartext")]
    pub http2_cleartext: bool,

    /// Streams an HTTP/2 client may have open at once.
    #[arg(long = "http2-max-concurrent-streams", value_name = "INT", default_value_t = 100, allow_negative_numbers = true, value_parser = clap::value_parser!(u32).range(1..))]
    pub http2_max_concurrent_streams: u32,

    /// Each HTTP/2 stream's initial flow-control window, in bytes.
    #[arg(long = "http2-initial-window-size", value_name = "BYTES", default_value_t = 65535, allow_negative_numbers = true, value_parser = clap::value_parser!(u32).range(1..=2_147_483_647))]
    pub http2_initial_window_size: u32,

    /// The largest HTTP/2 frame payload rgun accepts, in bytes (16384 to 16777215).
    #[arg(long = "http2-max-frame-size", value_name = "BYTES", default_value_t = 16384, allow_negative_numbers = true, value_parser = clap::value_parser!(u32).range(16_384..=16_777_215))]
    pub http2_max_frame_size: u32,

    /// The largest decoded header list of an HTTP/2 request, in bytes.
    #[arg(long = "http2-max-header-list-size", value_name = "BYTES", default_value_t = 65536, allow_negative_numbers = true, value_parser = clap::value_parser!(u32).range(1..))]
    pub http2_max_header_list_size: u32,
}

/// `--http-protocols`: which of HTTP/1 and HTTP/2 TLS offers, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Protocols(pub Vec<Protocol>);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    H1,
    H2,
}

impl Protocols {
    /// The ALPN names, in order (`h1` is offered as http/1.1 and http/1.0).
    pub fn alpn(&self) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        for p in &self.0 {
            match p {
                Protocol::H2 => out.push(b"h2".to_vec()),
                Protocol::H1 => {
                    out.push(b"http/1.1".to_vec());
                    out.push(b"http/1.0".to_vec());
                }
            }
        }
        out
    }

    fn names(&self) -> String {
        let names: Vec<&str> = self
            .0
            .iter()
            .map(|p| match p {
                Protocol::H1 => "h1",
                Protocol::H2 => "h2",
            })
            .collect();
        names.join(",")
    }
}

fn parse_protocols(s: &str) -> Result<Protocols, String> {
    let mut out = Vec::new();
    for name in s.split(',').map(str::trim).filter(|n| !n.is_empty()) {
        let p = match name {
            "h1" => Protocol::H1,
            "h2" => Protocol::H2,
            other => return Err(format!("unknown protocol {other:?} (h1 or h2)")),
        };
        if !out.contains(&p) {
            out.push(p);
        }
    }
    if out.is_empty() {
        return Err("no protocol given (h1, h2 or h2,h1)".to_owned());
    }
    Ok(Protocols(out))
}

impl Http2Args {
    /// Some client may get HTTP/2.
    pub fn enabled(&self) -> bool {
        self.http2_cleartext || self.http_protocols.0.contains(&Protocol::H2)
    }

    /// What every HTTP/2 connection announces and enforces.
    pub fn settings(&self) -> H2Settings {
        H2Settings {
            max_concurrent_streams: self.http2_max_concurrent_streams,
            initial_window_size: self.http2_initial_window_size,
            max_frame_size: self.http2_max_frame_size,
            max_header_list_size: self.http2_max_header_list_size,
        }
    }

    /// `--print-config`'s and `rgunctl config`'s view.
    pub fn settings_json(&self) -> serde_json::Map<String, serde_json::Value> {
        let mut m = serde_json::Map::new();
        m.insert("http_protocols".into(), self.http_protocols.names().into());
        m.insert("http2_cleartext".into(), self.http2_cleartext.into());
        m.insert(
            "http2_max_concurrent_streams".into(),
            self.http2_max_concurrent_streams.into(),
        );
        m.insert(
            "http2_initial_window_size".into(),
            self.http2_initial_window_size.into(),
        );
        m.insert(
            "http2_max_frame_size".into(),
            self.http2_max_frame_size.into(),
        );
        m.insert(
            "http2_max_header_list_size".into(),
            self.http2_max_header_list_size.into(),
        );
        m
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn protocols_parse_in_order_and_map_to_alpn() {
        let p = parse_protocols("h2,h1").unwrap();
        assert_eq!(
            p.alpn(),
            vec![b"h2".to_vec(), b"http/1.1".to_vec(), b"http/1.0".to_vec()]
        );
        assert!(parse_protocols("h3").unwrap_err().contains("h3"));
        assert!(parse_protocols("").is_err());
    }
}
