//! Request-head parsing: bytes in, a validated [`RequestHead`] (or "need more", or an
//! [`HttpError`]) out.
//!
//! This module does no I/O and knows nothing about Python. `httparse` does the
//! tokenising; on top of it we enforce Gunicorn's limits and the RFC 9110/9112 rules
//! that close request-smuggling holes (CRLF only, one Content-Length, chunked last,
//! no CL together with TE, no control bytes in values, sane request targets).

use std::ops::Range;
use std::sync::LazyLock;

use memchr::memmem::Finder;

use super::lenient::Leniency;
use super::HttpError;

/// Limits on the request head, Gunicorn's `--limit-request-*` settings.
#[derive(Debug, Clone, Copy)]
pub struct HeadLimits {
    /// Longest request line in bytes (`--limit-request-line`, 0 = unlimited).
    pub request_line_bytes: usize,
    /// Most header fields (`--limit-request-fields`).
    pub fields: usize,
    /// Longest header line in bytes (`--limit-request-field_size`).
    pub field_bytes: usize,
    /// Gunicorn's lenient-parsing switches (all off by default).
    pub lenient: Leniency,
}

impl Default for HeadLimits {
    fn default() -> Self {
        HeadLimits {
            request_line_bytes: 4094,
            fields: 100,
            field_bytes: 8190,
            lenient: Leniency::default(),
        }
    }
}

impl HeadLimits {
    /// The most bytes a complete head may occupy before we give up waiting for it.
    pub fn max_head_bytes(&self) -> usize {
        let line = if self.request_line_bytes == 0 {
            64 * 1024
        } else {
            self.request_line_bytes
        };
        line + 2 + self.fields * (self.field_bytes + 2) + 2
    }
}

/// How the request body is framed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BodyFraming {
    /// No body (no Content-Length, no chunked Transfer-Encoding).
    #[default]
    None,
    /// Exactly this many bytes.
    Length(u64),
    /// `Transfer-Encoding: ... chunked`.
    Chunked,
}

/// A parsed request head. Byte ranges index into the head bytes it was parsed from,
/// so a connection can keep one buffer and avoid per-request allocation.
#[derive(Debug, Default, Clone)]
pub struct RequestHead {
    pub method: Range<usize>,
    /// The raw request target as sent (`RAW_URI`).
    pub target: Range<usize>,
    /// Path part of the target (absolute-form targets are reduced to their path).
    pub path: Range<usize>,
    /// Query string (without `?`), possibly empty.
    pub query: Range<usize>,
    /// HTTP minor version: 0 or 1.
    pub minor_version: u8,
    /// The version the client wrote when `permit_unconventional_http_version` let an
    /// unconventional one through (served as 1.0 or 1.1, by `minor_version`).
    pub unconventional_version: Option<(u8, u8)>,
    /// The request came on an HTTP/2 stream (its head made by `http::h2`).
    pub http2: bool,
    /// Header (name, value) ranges; values are trimmed of surrounding whitespace.
    /// Header names containing `_` are not here (Gunicorn's `header_map = "drop"`).
    pub headers: Vec<(Range<usize>, Range<usize>)>,
    /// The fields whose names contain `_`, set aside: only `forwarder_headers` from a
    /// trusted peer reach the application (`http::forwarder`).
    pub underscored: Vec<(Range<usize>, Range<usize>)>,
    pub framing: BodyFraming,
    /// `Connection: close` (or HTTP/1.0 without `Connection: keep-alive`).
    pub wants_close: bool,
    /// `Expect: 100-continue`.
    pub expects_continue: bool,
    /// The request came in a uwsgi packet (`http::uwsgi`), not an HTTP/1 head: its
    /// response is never chunked, and its scheme is `uwsgi_https`, not headers'.
    pub uwsgi: bool,
    /// The uwsgi front end said the request came over HTTPS (`HTTPS=on`).
    pub uwsgi_https: bool,
}

impl RequestHead {
    pub fn method<'a>(&self, head: &'a [u8]) -> &'a [u8] {
        &head[self.method.clone()]
    }
    pub fn is_head_method(&self, head: &[u8]) -> bool {
        self.method(head) == b"HEAD"
    }
}

/// Parses one request head from the start of `buf`.
///
/// Returns `Ok(None)` when more bytes are needed, `Ok(Some(n))` with the head length
/// when a complete head was parsed into `out`.
pub fn parse_head(
    buf: &[u8],
    limits: &HeadLimits,
    out: &mut RequestHead,
) -> Result<Option<usize>, HttpError> {
    // Gunicorn skips blank lines before a request line; so do we (RFC 9112 2.2).
    let skip = buf
        .iter()
        .take_while(|&&b| b == b'\r' || b == b'\n')
        .count();
    if skip > 0 {
        // Skipping is only sound for whole CRLFs; anything else is garbage.
        let parsed = parse_head(&buf[skip..], limits, out)?;
        return Ok(parsed.map(|n| {
            shift(out, skip);
            n + skip
        }));
    }
    let line_end = memchr::memchr(b'\n', buf);
    match line_end {
        None => {
            if limits.request_line_bytes != 0 && buf.len() > limits.request_line_bytes + 1 {
                return Err(HttpError::RequestLineTooLong);
            }
            return Ok(None);
        }
        Some(end) => {
            let line_len = end.saturating_sub(1);
            if limits.request_line_bytes != 0 && line_len > limits.request_line_bytes {
                return Err(HttpError::RequestLineTooLong);
            }
        }
    }
    let Some(head_len) = find_head_end(buf) else {
        if buf.len() > limits.max_head_bytes() {
            return Err(HttpError::HeadersTooLarge);
        }
        check_partial_fields(buf, limits)?;
        return Ok(None);
    };
    let head = &buf[..head_len];
    reject_bare_lf(head)?;

    let mut storage = [httparse::EMPTY_HEADER; 128];
    let mut heap;
    let slots: &mut [httparse::Header] = if limits.fields <= storage.len() {
        &mut storage[..limits.fields]
    } else {
        heap = vec![httparse::EMPTY_HEADER; limits.fields];
        &mut heap
    };
    let mut req = httparse::Request::new(slots);
    match req.parse(head) {
        Ok(httparse::Status::Complete(_)) => {}
        Ok(httparse::Status::Partial) => return Err(HttpError::Malformed("incomplete head")),
        Err(httparse::Error::TooManyHeaders) => return Err(HttpError::TooManyHeaders),
        Err(httparse::Error::Version) => return Err(HttpError::Malformed("invalid HTTP version")),
        Err(httparse::Error::Token) => return Err(HttpError::Malformed("invalid method")),
        Err(httparse::Error::HeaderName) => {
            return Err(HttpError::Malformed("invalid header name"))
        }
        // Also every control byte but TAB (and DEL) in a value: httparse's value
        // table refuses them, so the values are not scanned again below.
        Err(httparse::Error::HeaderValue) => {
            return Err(HttpError::Malformed("invalid header value"))
        }
        Err(_) => return Err(HttpError::Malformed("invalid request line")),
    }
    let method = req.method.unwrap_or_default().as_bytes();
    validate_method(method, &limits.lenient)?;
    let target = req.path.unwrap_or_default().as_bytes();
    let base = head.as_ptr() as usize;
    let range_of = |s: &[u8]| {
        let start = s.as_ptr() as usize - base;
        start..start + s.len()
    };
    out.method = range_of(method);
    out.target = range_of(target);
    out.minor_version = req.version.unwrap_or(1);
    out.unconventional_version = None;
    let (path, query) = split_target(method, target)?;
    out.path = range_of(path);
    out.query = range_of(query);

    out.headers.clear();
    out.underscored.clear();
    out.framing = BodyFraming::None;
    out.expects_continue = false;
    let mut keep_alive_token = false;
    let mut close_token = false;
    let mut content_length: Option<u64> = None;
    let mut te = TransferCoding::default();
    let mut seen_host = false;
    let mut seen_content_type = false;
    for h in req.headers.iter() {
        let name = h.name.as_bytes();
        let value = trim(h.value);
        // Gunicorn counts the whole field line with its CRLF.
        let line_bytes = h.value.as_ptr() as usize + h.value.len() - h.name.as_ptr() as usize + 2;
        if line_bytes > limits.field_bytes {
            return Err(HttpError::HeaderFieldTooLarge);
        }
        if name.contains(&b'_') {
            out.underscored.push((range_of(name), range_of(value)));
            continue;
        }
        if name.eq_ignore_ascii_case(b"content-length") {
            if content_length.is_some() {
                return Err(HttpError::Malformed("duplicate Content-Length"));
            }
            content_length = Some(parse_content_length(value)?);
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            te.add(value)?;
        } else if name.eq_ignore_ascii_case(b"connection") {
            for token in value.split(|&b| b == b',').map(trim) {
                close_token |= token.eq_ignore_ascii_case(b"close");
                keep_alive_token |= token.eq_ignore_ascii_case(b"keep-alive");
            }
        } else if name.eq_ignore_ascii_case(b"expect") {
            out.expects_continue = value.eq_ignore_ascii_case(b"100-continue");
        } else if name.eq_ignore_ascii_case(b"host") {
            if std::mem::replace(&mut seen_host, true) {
                return Err(HttpError::Malformed("duplicate Host"));
            }
        } else if name.eq_ignore_ascii_case(b"content-type")
            && std::mem::replace(&mut seen_content_type, true)
        {
            return Err(HttpError::Malformed("duplicate Content-Type"));
        }
        out.headers.push((range_of(name), range_of(value)));
    }
    out.framing = match (te.present, content_length) {
        (true, Some(_)) if !te.only_identity => {
            return Err(HttpError::Malformed(
                "Content-Length with Transfer-Encoding",
            ))
        }
        (true, None) if out.minor_version == 0 && te.chunked => {
            return Err(HttpError::Malformed("chunked encoding in HTTP/1.0"))
        }
        (true, None) if te.chunked => BodyFraming::Chunked,
        (true, Some(0)) | (true, None) if te.only_identity => BodyFraming::None,
        (true, Some(n)) => BodyFraming::Length(n),
        (true, None) => return Err(HttpError::Malformed("unsupported Transfer-Encoding")),
        (false, Some(0)) | (false, None) => BodyFraming::None,
        (false, Some(n)) => BodyFraming::Length(n),
    };
    out.wants_close = close_token || (out.minor_version == 0 && !keep_alive_token);
    Ok(Some(head_len))
}

fn shift(out: &mut RequestHead, by: usize) {
    let mv = |r: &mut Range<usize>| *r = r.start + by..r.end + by;
    mv(&mut out.method);
    mv(&mut out.target);
    mv(&mut out.path);
    mv(&mut out.query);
    for (n, v) in out.headers.iter_mut().chain(out.underscored.iter_mut()) {
        mv(n);
        mv(v);
    }
}

/// Position just past the blank line that ends the head (`\r\n\r\n`).
fn find_head_end(buf: &[u8]) -> Option<usize> {
    // Searchers built once: building one per call cost more than the search.
    static CRLF_CRLF: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(b"\r\n\r\n"));
    static LF_LF: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(b"\n\n"));
    CRLF_CRLF.find(buf).map(|i| i + 4).or_else(|| {
        // A head with no fields may end at the request line's `\n\r\n` only via the above;
        // bare-LF heads are rejected by `reject_bare_lf` once complete, but we must still
        // notice them ending, or a `\n\n` client would wait for a timeout.
        LF_LF.find(buf).map(|i| i + 2)
    })
}

/// While the head is incomplete, a single header line over the limit is already an error.
fn check_partial_fields(buf: &[u8], limits: &HeadLimits) -> Result<(), HttpError> {
    let mut lines = buf.split(|&b| b == b'\n');
    lines.next(); // request line, checked by the caller
    let mut count = 0;
    for line in lines {
        if line.len() + 1 > limits.field_bytes {
            return Err(HttpError::HeaderFieldTooLarge);
        }
        count += 1;
        if count > limits.fields + 1 {
            return Err(HttpError::TooManyHeaders);
        }
    }
    Ok(())
}

fn reject_bare_lf(head: &[u8]) -> Result<(), HttpError> {
    for i in memchr::memchr_iter(b'\n', head) {
        if i == 0 || head[i - 1] != b'\r' {
            return Err(HttpError::Malformed("bare LF in request head"));
        }
    }
    Ok(())
}

/// Gunicorn's default method rule: a token of 3 to 20 characters with no lower-case
/// letters and no `#`. With `permit_unconventional_http_method`, any token (httparse
/// checked that), except one in lower case when `casefold_http_method` will upper-case
/// it (`lenient::rewrite`).
fn validate_method(method: &[u8], lenient: &Leniency) -> Result<(), HttpError> {
    let ok = (3..=20).contains(&method.len())
        && method.iter().all(|b| !b.is_ascii_lowercase() && *b != b'#');
    let permitted = || {
        lenient.unconventional_method
            && !(lenient.casefold_method && method.iter().any(u8::is_ascii_lowercase))
    };
    if ok || permitted() {
        Ok(())
    } else {
        Err(HttpError::Malformed("invalid method"))
    }
}

/// Splits a request target into (path, query), accepting origin-form, absolute-form,
/// `*` for OPTIONS and authority-form for CONNECT (RFC 9112 3.2).
fn split_target<'a>(method: &[u8], target: &'a [u8]) -> Result<(&'a [u8], &'a [u8]), HttpError> {
    if method == b"CONNECT" {
        return if target.first() != Some(&b'/') && !target.is_empty() {
            Ok((target, &target[target.len()..]))
        } else {
            Err(HttpError::Malformed("CONNECT needs an authority"))
        };
    }
    if target == b"*" {
        return if method == b"OPTIONS" {
            Ok((target, &target[1..]))
        } else {
            Err(HttpError::Malformed("asterisk target outside OPTIONS"))
        };
    }
    let rest = if target.first() == Some(&b'/') {
        target
    } else {
        absolute_form_path(target)?
    };
    let without_fragment = match memchr::memchr(b'#', rest) {
        Some(i) => &rest[..i],
        None => rest,
    };
    Ok(match memchr::memchr(b'?', without_fragment) {
        Some(i) => (&without_fragment[..i], &without_fragment[i + 1..]),
        None => (
            without_fragment,
            &without_fragment[without_fragment.len()..],
        ),
    })
}

/// `scheme://authority/path?query` → `/path?query` (possibly empty).
fn absolute_form_path(target: &[u8]) -> Result<&[u8], HttpError> {
    let bad = HttpError::Malformed("invalid request target");
    let colon = memchr::memchr(b':', target).ok_or(bad.clone())?;
    let scheme = &target[..colon];
    let scheme_ok = !scheme.is_empty()
        && scheme[0].is_ascii_alphabetic()
        && scheme
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || b"+-.".contains(b));
    let after = &target[colon..];
    if !scheme_ok || !after.starts_with(b"://") {
        return Err(bad);
    }
    let authority_and_path = &after[3..];
    let end = authority_and_path
        .iter()
        .position(|b| b"/?#".contains(b))
        .unwrap_or(authority_and_path.len());
    let authority = &authority_and_path[..end];
    if authority.is_empty()
        || authority.iter().any(|b| b"[]".contains(b)) && !authority_is_ipv6(authority)
    {
        return Err(bad);
    }
    Ok(&authority_and_path[end..])
}

fn authority_is_ipv6(authority: &[u8]) -> bool {
    let host = match memchr::memrchr(b'@', authority) {
        Some(i) => &authority[i + 1..],
        None => authority,
    };
    host.first() == Some(&b'[') && memchr::memchr(b']', host).is_some()
}

/// `1*DIGIT` only: no sign, no list form, no whitespace inside (RFC 9110 8.6).
fn parse_content_length(value: &[u8]) -> Result<u64, HttpError> {
    let bad = HttpError::Malformed("invalid Content-Length");
    if value.is_empty() || value.len() > 19 || !value.iter().all(u8::is_ascii_digit) {
        return Err(bad);
    }
    std::str::from_utf8(value)
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or(bad)
}

#[derive(Default)]
struct TransferCoding {
    present: bool,
    chunked: bool,
    only_identity: bool,
}

impl TransferCoding {
    /// Adds one `Transfer-Encoding` field. `chunked` must be the final coding and appear
    /// once (RFC 9112 6.1); anything after it is a smuggling attempt.
    fn add(&mut self, value: &[u8]) -> Result<(), HttpError> {
        if !self.present {
            self.only_identity = true;
        }
        self.present = true;
        for coding in value.split(|&b| b == b',').map(trim) {
            if self.chunked {
                return Err(HttpError::Malformed(
                    "chunked is not the final transfer coding",
                ));
            }
            if coding.eq_ignore_ascii_case(b"chunked") {
                self.chunked = true;
                self.only_identity = false;
            } else if !coding.eq_ignore_ascii_case(b"identity") {
                if coding.is_empty() || !coding.iter().all(|b| is_token_byte(*b)) {
                    return Err(HttpError::Malformed("invalid transfer coding"));
                }
                self.only_identity = false;
            }
        }
        Ok(())
    }
}

/// RFC 9110 `tchar`, as a lookup table (this runs for every header byte).
pub fn is_token_byte(b: u8) -> bool {
    const TABLE: [bool; 256] = {
        let mut t = [false; 256];
        let mut i = 0;
        while i < 256 {
            let c = i as u8;
            t[i] = c.is_ascii_alphanumeric()
                || matches!(
                    c,
                    b'!' | b'#'
                        | b'$'
                        | b'%'
                        | b'&'
                        | b'\''
                        | b'*'
                        | b'+'
                        | b'-'
                        | b'.'
                        | b'^'
                        | b'_'
                        | b'`'
                        | b'|'
                        | b'~'
                );
            i += 1;
        }
        t
    };
    TABLE[b as usize]
}

pub fn trim(v: &[u8]) -> &[u8] {
    let start = v
        .iter()
        .position(|b| *b != b' ' && *b != b'\t')
        .unwrap_or(v.len());
    let end = v
        .iter()
        .rposition(|b| *b != b' ' && *b != b'\t')
        .map_or(start, |i| i + 1);
    &v[start..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(raw: &[u8]) -> Result<Option<(RequestHead, usize)>, HttpError> {
        let mut head = RequestHead::default();
        parse_head(raw, &HeadLimits::default(), &mut head).map(|n| n.map(|n| (head, n)))
    }

    #[test]
    fn simple_get_is_complete() {
        let raw = b"GET /a?b=c HTTP/1.1\r\nHost: x\r\n\r\nrest";
        let (head, n) = parse(raw).unwrap().unwrap();
        assert_eq!(n, raw.len() - 4);
        assert_eq!(&raw[head.path.clone()], b"/a");
        assert_eq!(&raw[head.query.clone()], b"b=c");
        assert!(!head.wants_close);
    }

    #[test]
    fn partial_head_needs_more() {
        assert!(parse(b"GET / HTTP/1.1\r\nHost: x\r\n").unwrap().is_none());
    }

    #[test]
    fn long_request_line_is_414() {
        let mut raw = b"GET /".to_vec();
        raw.extend(std::iter::repeat_n(b'a', 5000));
        assert_eq!(parse(&raw).unwrap_err(), HttpError::RequestLineTooLong);
    }

    #[test]
    fn smuggling_shapes_are_rejected() {
        for raw in [
            &b"POST / HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n"[..],
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked, identity\r\n\r\n",
            b"POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\n",
            b"POST / HTTP/1.1\r\nContent-Length: +1\r\n\r\n",
            b"GET / HTTP/1.1\r\nA: b\nC: d\r\n\r\n",
        ] {
            assert!(parse(raw).is_err(), "{:?}", String::from_utf8_lossy(raw));
        }
    }

    #[test]
    fn control_bytes_in_values_are_rejected_but_tab_and_obs_text_are_not() {
        for b in (0u8..0x20).filter(|&b| b != b'\t').chain([0x7f]) {
            let raw = [&b"GET / HTTP/1.1\r\nX: a"[..], &[b], b"b\r\n\r\n"].concat();
            assert!(parse(&raw).is_err(), "byte {b:#04x} accepted in a value");
        }
        for b in [b'\t', 0x80, 0xff] {
            let raw = [&b"GET / HTTP/1.1\r\nX: a"[..], &[b], b"b\r\n\r\n"].concat();
            assert!(parse(&raw).is_ok(), "byte {b:#04x} refused in a value");
        }
    }

    #[test]
    fn absolute_form_reduces_to_path() {
        let raw = b"GET http://user:p@[::1]:80/foo?q=1 HTTP/1.1\r\n\r\n";
        let (head, _) = parse(raw).unwrap().unwrap();
        assert_eq!(&raw[head.path.clone()], b"/foo");
        assert_eq!(&raw[head.query.clone()], b"q=1");
    }
}
