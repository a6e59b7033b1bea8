//! Gunicorn's lenient-parsing switches (`permit_obsolete_folding`,
//! `strip_header_spaces`, `permit_unconventional_http_method`,
//! `permit_unconventional_http_version`, `casefold_http_method`), all off by default.
//!
//! The strict parser (`head::parse_head`) runs first, always; only a head it refuses
//! comes here. [`rewrite`] turns what a switch permits into what the strict parser
//! accepts, in place and at the same length (so every byte range stays valid), and the
//! caller parses again: the smuggling rules (one Content-Length, chunked last, no
//! Content-Length with Transfer-Encoding, CRLF only, no control bytes) then judge the
//! rewritten head as they judge any other, so no switch can loosen them. No I/O.

/// Which switches are on.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Leniency {
    /// A field line continued on the next (obs-fold): joined with one space.
    pub obsolete_folding: bool,
    /// Spaces and tabs between a field name and its colon are dropped.
    pub strip_header_spaces: bool,
    /// Any token is a method (not only 3 to 20 characters without lower case or `#`).
    pub unconventional_method: bool,
    /// Any `HTTP/D.D` version, not only 1.0 and 1.1.
    pub unconventional_version: bool,
    /// The method is upper-cased (with `unconventional_method`; without it a method in
    /// lower case is refused, as in Gunicorn).
    pub casefold_method: bool,
}

impl Leniency {
    /// Whether any switch that [`rewrite`] acts on is on.
    pub fn any(&self) -> bool {
        self.obsolete_folding
            || self.strip_header_spaces
            || self.unconventional_version
            || (self.unconventional_method && self.casefold_method)
    }
}

/// What [`rewrite`] changed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Rewritten {
    /// The request's own version when it was unconventional (`(1, 5)` for `HTTP/1.5`),
    /// written as the conventional one it is served as (1.0 below 1.1, else 1.1).
    pub version: Option<(u8, u8)>,
}

/// Rewrites the complete head at the start of `buf` (through its blank line) as the
/// switches permit. None when there is no complete head or nothing to rewrite.
pub fn rewrite(buf: &mut [u8], lenient: &Leniency) -> Option<Rewritten> {
    let end = memchr::memmem::find(buf, b"\r\n\r\n")? + 2;
    let head = &mut buf[..end];
    // CRLF only: a rewrite must not turn a bare LF into something accepted.
    if memchr::memchr_iter(b'\n', head).any(|i| i == 0 || head[i - 1] != b'\r') {
        return None;
    }
    let line_end = memchr::memchr(b'\n', head)? + 1;
    let (line, fields) = head.split_at_mut(line_end);
    let mut changed = false;
    if lenient.unconventional_method && lenient.casefold_method {
        changed |= casefold_method(line);
    }
    let version = if lenient.unconventional_version {
        conventional_version(line)
    } else {
        None
    };
    changed |= version.is_some();
    if lenient.obsolete_folding || lenient.strip_header_spaces {
        changed |= rewrite_fields(fields, lenient);
    }
    changed.then_some(Rewritten { version })
}

fn casefold_method(line: &mut [u8]) -> bool {
    let method_end = memchr::memchr(b' ', line).unwrap_or(0);
    let method = &mut line[..method_end];
    let lower = method.iter().any(u8::is_ascii_lowercase);
    method.make_ascii_uppercase();
    lower
}

/// `HTTP/D.D` other than 1.0 and 1.1 at the end of the request line becomes 1.0 (for
/// a version below 1.1) or 1.1; returns the original.
fn conventional_version(line: &mut [u8]) -> Option<(u8, u8)> {
    let text_end = line.len().checked_sub(2)?; // before CRLF
    let start = text_end.checked_sub(8)?;
    let version = &mut line[start..text_end];
    let (major, minor) = match version {
        [b'H', b'T', b'T', b'P', b'/', major, b'.', minor]
            if major.is_ascii_digit() && minor.is_ascii_digit() =>
        {
            (*major - b'0', *minor - b'0')
        }
        _ => return None,
    };
    if (major, minor) == (1, 0) || (major, minor) == (1, 1) {
        return None;
    }
    version[7] = if (major, minor) < (1, 1) { b'0' } else { b'1' };
    version[5] = b'1';
    Some((major, minor))
}

/// Each field line (with the lines folded into it) rewritten as `name:` padding
/// `value`, the value's folded parts joined with one space, the padding (optional
/// whitespace, which the parser trims) taking up the bytes saved.
fn rewrite_fields(fields: &mut [u8], lenient: &Leniency) -> bool {
    let mut changed = false;
    let mut start = 0;
    while start < fields.len() {
        let mut end = next_line_end(fields, start);
        if lenient.obsolete_folding {
            while end < fields.len() && matches!(fields[end], b' ' | b'\t') {
                end = next_line_end(fields, end);
            }
        }
        // The field's bytes without its final CRLF.
        let field = &mut fields[start..end.saturating_sub(2).max(start)];
        changed |= rewrite_field(field, lenient);
        start = end;
    }
    changed
}

/// Just past the CRLF of the line starting at `from` (or the end).
fn next_line_end(buf: &[u8], from: usize) -> usize {
    memchr::memchr(b'\n', &buf[from..]).map_or(buf.len(), |i| from + i + 1)
}

fn rewrite_field(field: &mut [u8], lenient: &Leniency) -> bool {
    let Some(colon) = memchr::memchr(b':', field) else {
        return false;
    };
    let folded = memchr::memchr(b'\n', field).is_some();
    if memchr::memchr(b'\n', &field[..colon]).is_some() {
        return false; // no colon on the field's first line: refused as it is
    }
    let name_len = if lenient.strip_header_spaces {
        field[..colon]
            .iter()
            .rposition(|b| !matches!(b, b' ' | b'\t'))
            .map_or(0, |i| i + 1)
    } else {
        colon
    };
    if !folded && name_len == colon {
        return false;
    }
    let value: Vec<u8> = field[colon + 1..]
        .split(|&b| b == b'\n')
        .map(|part| trim_ows(part.strip_suffix(b"\r").unwrap_or(part)))
        .collect::<Vec<_>>()
        .join(&b' ');
    let (_, rest) = field.split_at_mut(name_len);
    rest[0] = b':';
    let pad = rest.len() - 1 - value.len();
    rest[1..=pad].fill(b' ');
    rest[1 + pad..].copy_from_slice(&value);
    true
}

/// Without surrounding spaces and tabs (this module knows nothing of `head`, which
/// knows it).
fn trim_ows(v: &[u8]) -> &[u8] {
    let ows = |b: &u8| matches!(b, b' ' | b'\t');
    let start = v.iter().position(|b| !ows(b)).unwrap_or(v.len());
    let end = v.iter().rposition(|b| !ows(b)).map_or(start, |i| i + 1);
    &v[start..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL: Leniency = Leniency {
        obsolete_folding: true,
        strip_header_spaces: true,
        unconventional_method: true,
        unconventional_version: true,
        casefold_method: true,
    };

    fn rewritten(raw: &[u8], lenient: &Leniency) -> (Vec<u8>, Option<Rewritten>) {
        let mut buf = raw.to_vec();
        let r = rewrite(&mut buf, lenient);
        assert_eq!(buf.len(), raw.len());
        (buf, r)
    }

    #[test]
    fn folded_values_are_joined_with_one_space() {
        let raw = b"GET / HTTP/1.1\r\nX-A: a\r\n\tb\r\n  c \r\nHost: h\r\n\r\nbody";
        let (buf, r) = rewritten(raw, &ALL);
        assert!(r.is_some());
        assert_eq!(
            &buf[..],
            &b"GET / HTTP/1.1\r\nX-A:       a b c\r\nHost: h\r\n\r\nbody"[..]
        );
        let off = Leniency::default();
        assert_eq!(rewritten(raw, &off).1, None);
    }

    #[test]
    fn spaces_before_the_colon_are_dropped() {
        let raw = b"GET / HTTP/1.1\r\nX-A \t: v\r\n\r\n";
        let (buf, _) = rewritten(raw, &ALL);
        assert_eq!(&buf[..], &b"GET / HTTP/1.1\r\nX-A:   v\r\n\r\n"[..]);
        let folding_only = Leniency {
            obsolete_folding: true,
            ..Leniency::default()
        };
        assert_eq!(rewritten(raw, &folding_only).1, None);
    }

    #[test]
    fn versions_and_methods() {
        let (buf, r) = rewritten(b"get / HTTP/1.5\r\n\r\n", &ALL);
        assert_eq!(&buf[..], b"GET / HTTP/1.1\r\n\r\n");
        assert_eq!(r.unwrap().version, Some((1, 5)));
        let (buf, r) = rewritten(b"GET / HTTP/0.9\r\n\r\n", &ALL);
        assert_eq!(&buf[..], b"GET / HTTP/1.0\r\n\r\n");
        assert_eq!(r.unwrap().version, Some((0, 9)));
        assert_eq!(rewritten(b"GET / HTTP/1.1\r\n\r\n", &ALL).1, None);
        assert_eq!(rewritten(b"GET / HTTP/1.12\r\n\r\n", &ALL).1, None);
        assert_eq!(rewritten(b"GET / HTTP/1.5\r\n", &ALL).1, None, "incomplete");
        assert_eq!(
            rewritten(b"GET / HTTP/1.5\nX: a\r\n b\r\n\r\n", &ALL).1,
            None,
            "bare LF"
        );
        let name_folded = b"GET / HTTP/1.1\r\nTransfer-Encoding\r\n : chunked\r\n\r\n";
        assert_eq!(rewritten(name_folded, &ALL).1, None);
    }
}
