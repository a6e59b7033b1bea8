//! The uwsgi protocol (`--protocol uwsgi`, what nginx's `uwsgi_pass` speaks), sans I/O:
//! one request packet in, the same [`RequestHead`] the HTTP/1 parser gives out, so
//! the connection core, both bridges and the access log serve it unchanged.
//!
//! A packet is a 4-byte header (modifier1, the variables' size as 16-bit
//! little-endian, modifier2) and that many bytes of variables, each a 16-bit
//! little-endian length and a key, then the same for its value. The body follows,
//! `CONTENT_LENGTH` bytes. The variables map as Gunicorn maps them: `REQUEST_METHOD`,
//! `PATH_INFO` and `QUERY_STRING` make the request line, `HTTP_*`, `CONTENT_TYPE` and
//! `CONTENT_LENGTH` the header fields (`HTTP_X_REAL_IP` is `X-REAL-IP`), `HTTPS` or
//! `wsgi.url_scheme` the scheme; the others (`REMOTE_ADDR`, `SERVER_NAME`, ...) are
//! not used: the socket's peer and local address are. The response is HTTP/1.1, never
//! chunked (nginx passes the body on as it is).
//!
//! Unlike an HTTP head, a packet's names are not in the bytes as the head needs them,
//! so the head is written into a buffer of its own. No I/O, no Python.

use std::ops::Range;

use super::head::{BodyFraming, RequestHead};
use super::HttpError;

/// Bytes before the variables: modifier1, the variables' size (2), modifier2.
pub const PACKET_HEADER_BYTES: usize = 4;
/// Most variables in one packet, Gunicorn's bound (nginx sends about 15 and one per
/// request header field).
pub const MAX_VARS: usize = 1000;

/// Parses one request packet from the start of `buf` into `out`, writing the bytes its
/// ranges index into `head_bytes` (cleared first).
///
/// `Ok(None)`: more bytes are needed. `Ok(Some(n))`: the packet took `n` bytes of `buf`
/// (its body follows). An error: the packet is malformed and the connection must close
/// without an answer, since where the next packet starts is unknown.
pub fn parse_packet(
    buf: &[u8],
    out: &mut RequestHead,
    head_bytes: &mut Vec<u8>,
) -> Result<Option<usize>, HttpError> {
    let Some(header) = buf.get(..PACKET_HEADER_BYTES) else {
        return Ok(None);
    };
    if header[0] != 0 {
        return Err(HttpError::Malformed(
            "uwsgi packet of an unsupported modifier1",
        ));
    }
    let size = usize::from(u16::from_le_bytes([header[1], header[2]]));
    let end = PACKET_HEADER_BYTES + size;
    let Some(vars) = buf.get(PACKET_HEADER_BYTES..end) else {
        return Ok(None);
    };
    let request = read_vars(vars, out, head_bytes)?;
    request.write_line(vars, out, head_bytes);
    Ok(Some(end))
}

/// What the variables said, besides the header fields (ranges into the variables).
#[derive(Default)]
struct Request {
    method: Option<Range<usize>>,
    path: Option<Range<usize>>,
    query: Option<Range<usize>>,
}

/// Walks the variables: header fields go to `out.headers` (written into `head_bytes`),
/// the body's length, the scheme and `Connection: close` to `out`.
fn read_vars(
    vars: &[u8],
    out: &mut RequestHead,
    head_bytes: &mut Vec<u8>,
) -> Result<Request, HttpError> {
    head_bytes.clear();
    out.headers.clear();
    out.framing = BodyFraming::None;
    out.wants_close = false;
    out.expects_continue = false;
    out.http2 = false;
    out.minor_version = 1;
    out.uwsgi = true;
    out.uwsgi_https = false;
    let mut request = Request::default();
    let mut scheme_var = None;
    let mut pos = 0;
    let mut count = 0;
    while pos < vars.len() {
        count += 1;
        if count > MAX_VARS {
            return Err(HttpError::Malformed("too many uwsgi variables"));
        }
        let key = take_string(vars, &mut pos, "uwsgi variable name past the packet's end")?;
        let value = take_string(vars, &mut pos, "uwsgi variable value past the packet's end")?;
        let (name, text) = (&vars[key], &vars[value.clone()]);
        match name {
            b"REQUEST_METHOD" => request.method = Some(value),
            b"PATH_INFO" => request.path = Some(value),
            b"QUERY_STRING" => request.query = Some(value),
            b"HTTPS" => {
                out.uwsgi_https = [&b"on"[..], b"1", b"true"]
                    .iter()
                    .any(|v| text.eq_ignore_ascii_case(v));
            }
            b"wsgi.url_scheme" => scheme_var = Some(value),
            b"CONTENT_TYPE" | b"CONTENT_LENGTH" => push_field(name, text, out, head_bytes),
            _ => {
                if let Some(field) = name.strip_prefix(b"HTTP_") {
                    push_field(field, text, out, head_bytes);
                }
            }
        }
    }
    // `HTTPS` decides when it says on; `wsgi.url_scheme` only otherwise (Gunicorn).
    if let (false, Some(v)) = (out.uwsgi_https, scheme_var) {
        out.uwsgi_https = &vars[v] == b"https";
    }
    read_fields(out, head_bytes);
    Ok(request)
}

/// A length-prefixed string at `*pos`; moves past it.
fn take_string(
    vars: &[u8],
    pos: &mut usize,
    past_end: &'static str,
) -> Result<Range<usize>, HttpError> {
    let len = vars
        .get(*pos..*pos + 2)
        .map(|b| usize::from(u16::from_le_bytes([b[0], b[1]])))
        .ok_or(HttpError::Malformed(past_end))?;
    let start = *pos + 2;
    if start + len > vars.len() {
        return Err(HttpError::Malformed(past_end));
    }
    *pos = start + len;
    Ok(start..start + len)
}

/// One header field from a variable, its name's `_` as `-` (`X_REAL_IP` → `X-REAL-IP`).
/// A name sent twice keeps its first place and its last value, as Gunicorn's
/// dictionary of variables does.
fn push_field(name: &[u8], value: &[u8], out: &mut RequestHead, head_bytes: &mut Vec<u8>) {
    let name_start = head_bytes.len();
    head_bytes.extend(name.iter().map(|&b| if b == b'_' { b'-' } else { b }));
    let name_range = name_start..head_bytes.len();
    let value_start = head_bytes.len();
    head_bytes.extend_from_slice(value);
    let value_range = value_start..head_bytes.len();
    let seen = out
        .headers
        .iter_mut()
        .find(|(n, _)| head_bytes[n.clone()] == head_bytes[name_range.clone()]);
    match seen {
        Some((_, v)) => *v = value_range,
        None => out.headers.push((name_range, value_range)),
    }
}

/// The fields that frame the request: `CONTENT_LENGTH` (Gunicorn reads a missing,
/// negative or unreadable one as 0; there is no chunked body in uwsgi) and
/// `Connection: close`.
fn read_fields(out: &mut RequestHead, head_bytes: &[u8]) {
    for (name, value) in &out.headers {
        let (name, value) = (&head_bytes[name.clone()], &head_bytes[value.clone()]);
        if name == b"CONTENT-LENGTH" {
            let n = std::str::from_utf8(value)
                .ok()
                .and_then(|t| t.trim().parse::<i64>().ok())
                .unwrap_or(0);
            out.framing = match u64::try_from(n) {
                Ok(n) if n > 0 => BodyFraming::Length(n),
                _ => BodyFraming::None,
            };
        } else if name == b"CONNECTION" {
            out.wants_close = value.eq_ignore_ascii_case(b"close");
        }
    }
}

impl Request {
    /// Writes `METHOD PATH[?QUERY]` (Gunicorn's `RAW_URI`) after the fields, and the
    /// path the bridges decode. `PATH_INFO` arrives decoded (nginx's `$document_uri`),
    /// so its `%` are escaped: the bridges' one decoding gives it back as it came.
    fn write_line(self, vars: &[u8], out: &mut RequestHead, head_bytes: &mut Vec<u8>) {
        let text = |r: Option<Range<usize>>, default: &'static [u8]| match r {
            Some(r) => &vars[r],
            None => default,
        };
        let (method, path) = (text(self.method, b"GET"), text(self.path, b"/"));
        let query = text(self.query, b"");
        let start = head_bytes.len();
        head_bytes.extend_from_slice(method);
        out.method = start..head_bytes.len();
        head_bytes.push(b' ');
        let target_start = head_bytes.len();
        head_bytes.extend_from_slice(path);
        out.path = target_start..head_bytes.len();
        if !query.is_empty() {
            head_bytes.push(b'?');
        }
        let query_start = head_bytes.len();
        head_bytes.extend_from_slice(query);
        out.query = query_start..head_bytes.len();
        out.target = target_start..head_bytes.len();
        if path.contains(&b'%') {
            let escaped_start = head_bytes.len();
            for &b in path {
                match b {
                    b'%' => head_bytes.extend_from_slice(b"%25"),
                    _ => head_bytes.push(b),
                }
            }
            out.path = escaped_start..head_bytes.len();
        }
    }
}

/// A packet of these variables, as nginx writes one (for tests).
#[cfg(test)]
pub(crate) fn packet(vars: &[(&str, &str)]) -> Vec<u8> {
    let mut body = Vec::new();
    for (k, v) in vars {
        body.extend_from_slice(&(k.len() as u16).to_le_bytes());
        body.extend_from_slice(k.as_bytes());
        body.extend_from_slice(&(v.len() as u16).to_le_bytes());
        body.extend_from_slice(v.as_bytes());
    }
    let mut p = vec![0];
    p.extend_from_slice(&(body.len() as u16).to_le_bytes());
    p.push(0);
    p.extend_from_slice(&body);
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(buf: &[u8]) -> Result<Option<(usize, RequestHead, Vec<u8>)>, HttpError> {
        let mut head = RequestHead::default();
        let mut bytes = Vec::new();
        Ok(parse_packet(buf, &mut head, &mut bytes)?.map(|n| (n, head, bytes)))
    }

    fn field<'a>(head: &RequestHead, bytes: &'a [u8], name: &str) -> Option<&'a str> {
        head.headers
            .iter()
            .find(|(n, _)| &bytes[n.clone()] == name.as_bytes())
            .map(|(_, v)| std::str::from_utf8(&bytes[v.clone()]).unwrap())
    }

    fn text(bytes: &[u8], r: &Range<usize>) -> String {
        String::from_utf8(bytes[r.clone()].to_vec()).unwrap()
    }

    #[test]
    fn nginx_packet_becomes_a_head() {
        let p = packet(&[
            ("QUERY_STRING", "a=1&b=2"),
            ("REQUEST_METHOD", "POST"),
            ("CONTENT_TYPE", "application/json"),
            ("CONTENT_LENGTH", "12"),
            ("REQUEST_URI", "/x%20y?a=1&b=2"),
            ("PATH_INFO", "/x y"),
            ("REMOTE_ADDR", "10.0.0.9"),
            ("HTTP_HOST", "example.com"),
            ("HTTP_X_FORWARDED_FOR", "10.0.0.9"),
        ]);
        let mut buf = p.clone();
        buf.extend_from_slice(b"{\"a\": 1234}");
        let (n, head, bytes) = parse(&buf).unwrap().unwrap();
        assert_eq!(n, p.len());
        assert_eq!(text(&bytes, &head.method), "POST");
        assert_eq!(text(&bytes, &head.target), "/x y?a=1&b=2");
        assert_eq!(text(&bytes, &head.path), "/x y");
        assert_eq!(text(&bytes, &head.query), "a=1&b=2");
        assert_eq!(
            text(&bytes, &(head.method.start..head.target.end)),
            "POST /x y?a=1&b=2"
        );
        assert_eq!(field(&head, &bytes, "HOST"), Some("example.com"));
        assert_eq!(field(&head, &bytes, "X-FORWARDED-FOR"), Some("10.0.0.9"));
        assert_eq!(
            field(&head, &bytes, "CONTENT-TYPE"),
            Some("application/json")
        );
        assert_eq!(field(&head, &bytes, "REMOTE-ADDR"), None);
        assert_eq!(head.headers.len(), 4);
        assert_eq!(head.framing, BodyFraming::Length(12));
        assert_eq!(head.minor_version, 1);
        assert!(head.uwsgi && !head.uwsgi_https && !head.wants_close);
    }

    #[test]
    fn defaults_for_an_empty_packet() {
        let (n, head, bytes) = parse(&[0, 0, 0, 0]).unwrap().unwrap();
        assert_eq!(n, 4);
        assert_eq!(text(&bytes, &head.method), "GET");
        assert_eq!(text(&bytes, &head.target), "/");
        assert!(head.query.is_empty() && head.headers.is_empty());
        assert_eq!(head.framing, BodyFraming::None);
    }

    #[test]
    fn a_percent_in_path_info_survives_the_bridges_decoding() {
        let p = packet(&[("PATH_INFO", "/100%25/a%2fb"), ("QUERY_STRING", "q=%41")]);
        let (_, head, bytes) = parse(&p).unwrap().unwrap();
        let decoded = crate::http::percent_decode(&bytes[head.path.clone()]);
        assert_eq!(&decoded[..], b"/100%25/a%2fb");
        assert_eq!(text(&bytes, &head.target), "/100%25/a%2fb?q=%41");
        assert_eq!(text(&bytes, &head.query), "q=%41");
    }

    #[test]
    fn scheme_from_https_or_url_scheme() {
        for (vars, https) in [
            (vec![("HTTPS", "on")], true),
            (vec![("HTTPS", "1")], true),
            (vec![("HTTPS", "TRUE")], true),
            (vec![("HTTPS", "off")], false),
            (vec![("wsgi.url_scheme", "https")], true),
            (vec![("HTTPS", "on"), ("wsgi.url_scheme", "http")], true),
            (vec![], false),
        ] {
            let (_, head, _) = parse(&packet(&vars)).unwrap().unwrap();
            assert_eq!(head.uwsgi_https, https, "{vars:?}");
        }
    }

    #[test]
    fn content_length_read_as_gunicorn_does() {
        for (value, framing) in [
            ("0", BodyFraming::None),
            ("-5", BodyFraming::None),
            ("ten", BodyFraming::None),
            (" 7 ", BodyFraming::Length(7)),
        ] {
            let (_, head, _) = parse(&packet(&[("CONTENT_LENGTH", value)]))
                .unwrap()
                .unwrap();
            assert_eq!(head.framing, framing, "{value:?}");
        }
    }

    #[test]
    fn connection_close_and_repeated_names() {
        let p = packet(&[
            ("HTTP_CONNECTION", "Close"),
            ("HTTP_X_A", "1"),
            ("HTTP_X_B", "2"),
            ("HTTP_X_A", "3"),
        ]);
        let (_, head, bytes) = parse(&p).unwrap().unwrap();
        assert!(head.wants_close);
        let names: Vec<_> = head.headers.iter().map(|(n, _)| text(&bytes, n)).collect();
        assert_eq!(names, ["CONNECTION", "X-A", "X-B"]);
        assert_eq!(field(&head, &bytes, "X-A"), Some("3"));
    }

    #[test]
    fn need_more_until_the_packet_is_whole() {
        let p = packet(&[("PATH_INFO", "/"), ("HTTP_HOST", "h")]);
        for cut in 0..p.len() {
            assert!(parse(&p[..cut]).unwrap().is_none(), "cut at {cut}");
        }
        assert!(parse(&p).unwrap().is_some());
    }

    #[test]
    fn malformed_packets_are_errors() {
        // Another modifier1 (a uwsgi "ping", a Perl request, ...).
        assert!(parse(&[72, 0, 0, 0]).is_err());
        // A name whose length runs past the variables' end.
        assert!(parse(&[0, 4, 0, 0, 9, 0, b'A', b'B']).is_err());
        // A value's length past the end.
        assert!(parse(&[0, 6, 0, 0, 1, 0, b'A', 5, 0, b'x']).is_err());
        // A name with no room for its value's length.
        assert!(parse(&[0, 3, 0, 0, 1, 0, b'A']).is_err());
        // A lone byte left over.
        assert!(parse(&[0, 1, 0, 0, 0]).is_err());
    }

    #[test]
    fn too_many_variables() {
        let vars: Vec<(String, String)> = (0..=MAX_VARS)
            .map(|_| (String::new(), String::new()))
            .collect();
        let refs: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        assert!(parse(&packet(&refs)).is_err());
        assert!(parse(&packet(&refs[..MAX_VARS])).unwrap().is_some());
    }

    #[test]
    fn a_head_reused_for_the_next_packet_forgets_the_last() {
        let mut head = RequestHead::default();
        let mut bytes = Vec::new();
        let first = packet(&[
            ("HTTP_CONNECTION", "close"),
            ("CONTENT_LENGTH", "3"),
            ("HTTPS", "on"),
        ]);
        parse_packet(&first, &mut head, &mut bytes)
            .unwrap()
            .unwrap();
        parse_packet(&packet(&[]), &mut head, &mut bytes)
            .unwrap()
            .unwrap();
        assert!(!head.wants_close && !head.uwsgi_https && head.headers.is_empty());
        assert_eq!(head.framing, BodyFraming::None);
    }
}
