//! The request's scheme: whether it came over HTTPS by a trusted proxy's word
//! (Gunicorn's `secure_scheme_headers`). Every protocol and both bridges ask this one
//! function, so a request gets the same answer (and the same 400 for disagreeing
//! headers) whatever carried it. No I/O, no Python.

use super::head::RequestHead;
use super::HttpError;

/// Gunicorn's `secure_scheme_headers`: from a trusted peer, these headers say whether
/// the original request was HTTPS. Disagreeing headers are a 400, as in Gunicorn.
pub fn is_https(
    head_bytes: &[u8],
    head: &RequestHead,
    trusted: bool,
    secure: &[(String, String)],
) -> Result<bool, HttpError> {
    // uwsgi carries the scheme in its own variables; Gunicorn reads no headers for it.
    if head.uwsgi {
        return Ok(head.uwsgi_https);
    }
    if !trusted {
        return Ok(false);
    }
    let mut verdict = None;
    for (name, value) in &head.headers {
        let name = &head_bytes[name.clone()];
        let value = &head_bytes[value.clone()];
        for (secure_name, secure_value) in secure {
            if name.eq_ignore_ascii_case(secure_name.as_bytes()) {
                let is_secure = value.eq_ignore_ascii_case(secure_value.as_bytes());
                if verdict.is_some_and(|v| v != is_secure) {
                    return Err(HttpError::Malformed("contradictory scheme headers"));
                }
                verdict = Some(is_secure);
            }
        }
    }
    Ok(verdict.unwrap_or(false))
}
