//! The PROXY protocol (HAProxy's v1 text and v2 binary headers), sans I/O: a load
//! balancer in front tells us the real client address before the first request.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use super::HttpError;

const V2_SIGNATURE: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";
/// A v1 header is at most 107 bytes, CRLF included.
const V1_MAX_BYTES: usize = 107;

/// Which headers a listener accepts (`--proxy-protocol`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyMode {
    Off,
    V1,
    V2,
    /// v1 or v2, or none at all.
    Auto,
}

/// What a header says: the original client, or nothing (`UNKNOWN`, `LOCAL`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProxyHeader {
    pub client: Option<SocketAddr>,
}

/// Parses a header at the start of `buf`.
/// `Ok(None)`: more bytes needed. `Ok(Some((None, 0)))`: no header here (auto mode).
pub fn parse(
    buf: &[u8],
    mode: ProxyMode,
) -> Result<Option<(Option<ProxyHeader>, usize)>, HttpError> {
    let bad = HttpError::Malformed("invalid PROXY protocol header");
    let allow_v1 = matches!(mode, ProxyMode::V1 | ProxyMode::Auto);
    let allow_v2 = matches!(mode, ProxyMode::V2 | ProxyMode::Auto);
    let could_be = |sig: &[u8]| buf.len() < sig.len() && sig.starts_with(buf);
    if allow_v2 && buf.starts_with(V2_SIGNATURE) {
        return parse_v2(buf);
    }
    if allow_v1 && buf.starts_with(b"PROXY ") {
        return parse_v1(buf);
    }
    if (allow_v2 && could_be(V2_SIGNATURE)) || (allow_v1 && could_be(b"PROXY ")) {
        return Ok(None);
    }
    if mode == ProxyMode::Auto {
        return Ok(Some((None, 0)));
    }
    Err(bad)
}

fn parse_v1(buf: &[u8]) -> Result<Option<(Option<ProxyHeader>, usize)>, HttpError> {
    let bad = HttpError::Malformed("invalid PROXY protocol v1 header");
    let Some(end) = memchr::memmem::find(buf, b"\r\n") else {
        return if buf.len() >= V1_MAX_BYTES {
            Err(bad)
        } else {
            Ok(None)
        };
    };
    if end + 2 > V1_MAX_BYTES {
        return Err(bad);
    }
    let line = std::str::from_utf8(&buf[..end]).map_err(|_| bad.clone())?;
    let parts: Vec<&str> = line.split(' ').collect();
    let header = match parts.as_slice() {
        ["PROXY", "UNKNOWN", ..] => ProxyHeader { client: None },
        ["PROXY", proto @ ("TCP4" | "TCP6"), src, dst, sport, dport] => {
            let src: IpAddr = src.parse().map_err(|_| bad.clone())?;
            let dst: IpAddr = dst.parse().map_err(|_| bad.clone())?;
            let v4 = *proto == "TCP4";
            if src.is_ipv4() != v4 || dst.is_ipv4() != v4 {
                return Err(bad);
            }
            let port = |p: &str| -> Result<u16, HttpError> {
                if p.is_empty()
                    || p.len() > 5
                    || !p.bytes().all(|b| b.is_ascii_digit())
                    || (p.len() > 1 && p.starts_with('0'))
                {
                    return Err(bad.clone());
                }
                p.parse().map_err(|_| bad.clone())
            };
            let sport = port(sport)?;
            port(dport)?;
            ProxyHeader {
                client: Some(SocketAddr::new(src, sport)),
            }
        }
        _ => return Err(bad),
    };
    Ok(Some((Some(header), end + 2)))
}

fn parse_v2(buf: &[u8]) -> Result<Option<(Option<ProxyHeader>, usize)>, HttpError> {
    let bad = HttpError::Malformed("invalid PROXY protocol v2 header");
    if buf.len() < 16 {
        return Ok(None);
    }
    let ver_cmd = buf[12];
    let family = buf[13];
    let len = u16::from_be_bytes([buf[14], buf[15]]) as usize;
    if ver_cmd >> 4 != 2 {
        return Err(bad);
    }
    if buf.len() < 16 + len {
        return Ok(None);
    }
    let body = &buf[16..16 + len];
    let total = 16 + len;
    let client = match (ver_cmd & 0x0f, family) {
        (0, _) => None, // LOCAL: a health check from the proxy itself
        (1, 0x11) if body.len() >= 12 => {
            let ip = Ipv4Addr::new(body[0], body[1], body[2], body[3]);
            Some(SocketAddr::new(
                ip.into(),
                u16::from_be_bytes([body[8], body[9]]),
            ))
        }
        (1, 0x21) if body.len() >= 36 => {
            let mut octets = [0u8; 16];
            octets.copy_from_slice(&body[..16]);
            Some(SocketAddr::new(
                Ipv6Addr::from(octets).into(),
                u16::from_be_bytes([body[32], body[33]]),
            ))
        }
        (1, _) => None, // UNSPEC or a family we do not map: keep the socket's address
        _ => return Err(bad),
    };
    Ok(Some((Some(ProxyHeader { client }), total)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v1_tcp4() {
        let raw = b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\nGET / HTTP/1.1\r\n";
        let (h, n) = parse(raw, ProxyMode::Auto).unwrap().unwrap();
        assert_eq!(
            h.unwrap().client,
            Some("192.168.0.1:56324".parse().unwrap())
        );
        assert_eq!(&raw[n..n + 3], b"GET");
    }

    #[test]
    fn v1_garbage_is_refused() {
        for raw in [
            &b"PROXY TCP4 192.168.0.1 192.168.0.11 65iii 100000\r\n"[..],
            b"PROXY TCP4 not-an-ip 1.2.3.4 1 2\r\n",
            b"PROXY TCP4 192.168.0.1 192.16...\r\n",
        ] {
            assert!(
                parse(raw, ProxyMode::Auto).is_err(),
                "{:?}",
                String::from_utf8_lossy(raw)
            );
        }
    }

    #[test]
    fn auto_without_header_passes_through_and_partial_waits() {
        assert_eq!(
            parse(b"GET / HTTP/1.1\r\n", ProxyMode::Auto).unwrap(),
            Some((None, 0))
        );
        assert_eq!(parse(b"PRO", ProxyMode::Auto).unwrap(), None);
        assert_eq!(parse(b"\r\n\r\n\0", ProxyMode::Auto).unwrap(), None);
    }

    #[test]
    fn v2_ipv4() {
        let mut raw = V2_SIGNATURE.to_vec();
        raw.extend_from_slice(&[
            0x21, 0x11, 0, 12, 10, 0, 0, 1, 10, 0, 0, 2, 0x1f, 0x90, 0, 80,
        ]);
        raw.extend_from_slice(b"GET");
        let (h, n) = parse(&raw, ProxyMode::V2).unwrap().unwrap();
        assert_eq!(h.unwrap().client, Some("10.0.0.1:8080".parse().unwrap()));
        assert_eq!(&raw[n..], b"GET");
    }
}
