//! Building the WSGI `environ` dict from a parsed request (PEP 3333 and Gunicorn's
//! extras such as `RAW_URI`).
//!
//! The constant part is built once per worker and copied per request (a C-level dict
//! copy); keys are interned Python strings; values decode as latin-1, as the PEP says.
//! The template also holds the usual value of keys that rarely change (`GET`,
//! `HTTP/1.1`, `http`, empty `SCRIPT_NAME` and `QUERY_STRING`), which a request then
//! sets only when it differs: each dict store costs ~250 instructions.

use pyo3::prelude::*;
use pyo3::types::{PyDict, PyString};
use rustc_hash::FxHashMap;

use crate::http::request::RequestInfo;

/// REMOTE_ADDR and REMOTE_PORT as Python strings (an HTTP/1 connection makes them
/// once for all its requests).
pub type Remote = (Py<PyString>, Py<PyString>);

/// Settings and interned strings shared by every request of a worker.
pub struct EnvironBuilder {
    /// The template, in a table just big enough for itself and a few headers.
    base: Py<PyDict>,
    /// The same, in a table with room for a browser's or a proxy's headers.
    base_roomy: Py<PyDict>,
    script_name: Vec<u8>,
    /// Entries in the template.
    base_len: usize,
    k: Keys,
    /// `HTTP_*` keys of common request headers, by lower-case header name, made once.
    /// (Fx rather than SipHash: looked up for every header of every request, with
    /// fixed keys, so flooding is not a concern.)
    header_keys: FxHashMap<&'static [u8], Py<PyString>>,
}

/// Request headers whose environ keys are built once per worker rather than per request.
/// `SERVER_SOFTWARE`, in every request's environ and in `os.environ` (as Gunicorn sets
/// both): the token of the Gunicorn release rgun follows first, so that applications which look for
/// `gunicorn` in it (`"gunicorn" in ...`, `.startswith("gunicorn")`) take the same path
/// as under Gunicorn, then rgun's own as a comment (RFC 3875's product/comment list).
pub const SERVER_SOFTWARE: &str = concat!("gunicorn/27.0.1 (rgun/", env!("CARGO_PKG_VERSION"), ")");

const COMMON_HEADERS: &[&str] = &[
    "host",
    "user-agent",
    "accept",
    "accept-encoding",
    "accept-language",
    "accept-charset",
    "connection",
    "cookie",
    "referer",
    "cache-control",
    "pragma",
    "origin",
    "authorization",
    "upgrade-insecure-requests",
    "if-none-match",
    "if-modified-since",
    "range",
    "dnt",
    "te",
    "keep-alive",
    "expect",
    "via",
    "forwarded",
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-host",
    "x-forwarded-port",
    "x-real-ip",
    "x-request-id",
    "x-requested-with",
    "x-csrftoken",
    "sec-fetch-site",
    "sec-fetch-mode",
    "sec-fetch-dest",
    "sec-fetch-user",
    "sec-ch-ua",
    "sec-ch-ua-mobile",
    "sec-ch-ua-platform",
    "priority",
];

crate::python::interned_keys! {
    request_method = "REQUEST_METHOD",
    script_name = "SCRIPT_NAME",
    path_info = "PATH_INFO",
    query_string = "QUERY_STRING",
    raw_uri = "RAW_URI",
    server_protocol = "SERVER_PROTOCOL",
    remote_addr = "REMOTE_ADDR",
    remote_port = "REMOTE_PORT",
    server_name = "SERVER_NAME",
    server_port = "SERVER_PORT",
    content_type = "CONTENT_TYPE",
    content_length = "CONTENT_LENGTH",
    url_scheme = "wsgi.url_scheme",
    input = "wsgi.input",
    http = "http",
    https_ = "https",
    http10 = "HTTP/1.0",
    http11 = "HTTP/1.1",
    http2 = "HTTP/2",
    get = "GET",
    empty = "",
    port80 = "80",
    port443 = "443",
}

impl EnvironBuilder {
    /// `multithread`/`multiprocess` as PEP 3333 defines them for this worker.
    pub fn new(
        py: Python<'_>,
        multithread: bool,
        multiprocess: bool,
        file_wrapper: &Bound<'_, PyAny>,
    ) -> PyResult<EnvironBuilder> {
        let base = PyDict::new(py);
        base.set_item("wsgi.version", (1, 0))?;
        base.set_item("wsgi.multithread", multithread)?;
        base.set_item("wsgi.multiprocess", multiprocess)?;
        base.set_item("wsgi.run_once", false)?;
        base.set_item("wsgi.errors", py.import("sys")?.getattr("stderr")?)?;
        base.set_item("wsgi.file_wrapper", file_wrapper)?;
        base.set_item("wsgi.input_terminated", true)?;
        base.set_item("SERVER_SOFTWARE", SERVER_SOFTWARE)?;
        let keys = Keys::new(py);
        // Every request sets these: overwriting a key the copy already has is cheaper
        // than adding one.
        for key in [
            &keys.path_info,
            &keys.raw_uri,
            &keys.remote_addr,
            &keys.remote_port,
            &keys.input,
            &keys.server_name,
            &keys.server_port,
        ] {
            base.set_item(key, &keys.empty)?;
        }
        // Set by a request only when it differs from these.
        base.set_item(&keys.request_method, &keys.get)?;
        base.set_item(&keys.script_name, &keys.empty)?;
        base.set_item(&keys.query_string, &keys.empty)?;
        base.set_item(&keys.server_protocol, &keys.http11)?;
        base.set_item(&keys.url_scheme, &keys.http)?;
        // Entry by entry: `update` into an empty dict would clone the small table.
        let base_roomy = presized_dict(py, ROOMY_ENTRIES)?;
        for (key, value) in base.iter() {
            base_roomy.set_item(key, value)?;
        }
        let script_name = std::env::var("SCRIPT_NAME").unwrap_or_default();
        let script_name = script_name.trim_end_matches('/').as_bytes().to_vec();
        let header_keys = COMMON_HEADERS
            .iter()
            .map(|h| {
                (
                    h.as_bytes(),
                    PyString::intern(py, &http_key(h.as_bytes())).unbind(),
                )
            })
            .collect();
        Ok(EnvironBuilder {
            base_len: base.len(),
            base: base.unbind(),
            base_roomy: base_roomy.unbind(),
            script_name,
            k: keys,
            header_keys,
        })
    }

    pub fn clone_ref(&self, py: Python<'_>) -> EnvironBuilder {
        EnvironBuilder {
            base: self.base.clone_ref(py),
            base_len: self.base_len,
            base_roomy: self.base_roomy.clone_ref(py),
            script_name: self.script_name.clone(),
            k: self.k.clone_ref(py),
            header_keys: self
                .header_keys
                .iter()
                .map(|(n, k)| (*n, k.clone_ref(py)))
                .collect(),
        }
    }

    /// A fresh environ for one request; `input` becomes `wsgi.input`.
    pub fn build<'py>(
        &self,
        py: Python<'py>,
        req: &RequestInfo<'_>,
        remote: &Remote,
        input: Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyDict>> {
        let k = &self.k;
        // A copy keeps its template's table size: the small one when the request's
        // headers fit beside the template without a resize (a resize, or copying the
        // roomy table, costs more than either copy).
        let template = if self.base_len + req.head.headers.len() <= SMALL_TABLE_ENTRIES {
            &self.base
        } else {
            &self.base_roomy
        };
        let env = template.bind(py).copy()?;
        let head = req.head;
        let bytes = req.head_bytes;
        let method = &bytes[head.method.clone()];
        if method != b"GET" {
            env.set_item(&k.request_method, latin1(py, method))?;
        }
        let path = percent_decode(&bytes[head.path.clone()]);
        let (script, path_info) = match path.strip_prefix(self.script_name.as_slice()) {
            Some(rest) if !self.script_name.is_empty() && (rest.is_empty() || rest[0] == b'/') => {
                (&self.script_name[..], rest)
            }
            _ => (&b""[..], &path[..]),
        };
        if !script.is_empty() {
            env.set_item(&k.script_name, latin1(py, script))?;
        }
        env.set_item(&k.path_info, latin1(py, path_info))?;
        let query = &bytes[head.query.clone()];
        if !query.is_empty() {
            env.set_item(&k.query_string, latin1(py, query))?;
        }
        env.set_item(&k.raw_uri, latin1(py, &bytes[head.target.clone()]))?;
        if head.http2 {
            env.set_item(&k.server_protocol, &k.http2)?;
        } else if let Some((major, minor)) = head.unconventional_version {
            env.set_item(&k.server_protocol, format!("HTTP/{major}.{minor}"))?;
        } else if head.minor_version == 0 {
            env.set_item(&k.server_protocol, &k.http10)?;
        }
        env.set_item(&k.remote_addr, remote.0.bind(py))?;
        env.set_item(&k.remote_port, remote.1.bind(py))?;
        if req.https {
            env.set_item(&k.url_scheme, &k.https_)?;
        }
        if let Some(subject) = req.client_subject {
            env.set_item("SSL_CLIENT_S_DN", subject)?;
        }
        env.set_item(&k.input, input)?;

        let mut host: Option<&[u8]> = None;
        let mut lower = [0u8; 32];
        for (name, value) in &head.headers {
            let name = &bytes[name.clone()];
            let value = &bytes[value.clone()];
            if name.eq_ignore_ascii_case(b"content-type") {
                env.set_item(&k.content_type, latin1(py, value))?;
                continue;
            }
            if name.eq_ignore_ascii_case(b"content-length") {
                env.set_item(&k.content_length, latin1(py, value))?;
                continue;
            }
            if name.eq_ignore_ascii_case(b"host") {
                host = Some(value);
            }
            let common = (name.len() <= lower.len())
                .then(|| {
                    let l = &mut lower[..name.len()];
                    l.copy_from_slice(name);
                    l.make_ascii_lowercase();
                    self.header_keys.get(&*l)
                })
                .flatten();
            let key = match common {
                Some(k) => k.bind(py).clone(),
                None => PyString::new(py, &http_key(name)),
            };
            // Repeated fields are joined with a comma (RFC 9110 5.3).
            let value = latin1(py, value);
            let stored = set_default(&env, &key, &value)?;
            if !stored.is(&value) {
                let joined = format!("{},{}", stored.extract::<String>()?, value.to_cow()?);
                env.set_item(key, joined)?;
            }
        }
        if req.peer.trusted && !head.underscored.is_empty() {
            self.add_forwarded(py, &env, req)?;
        }
        let (server_name, server_port) = match host {
            Some(h) => split_host(h),
            None => (req.local.name.as_bytes(), req.local.port.as_bytes()),
        };
        env.set_item(&k.server_name, latin1(py, server_name))?;
        let port = if !server_port.is_empty() {
            latin1(py, server_port)
        } else if req.https {
            k.port443.bind(py).clone()
        } else {
            k.port80.bind(py).clone()
        };
        env.set_item(&k.server_port, port)?;
        Ok(env)
    }
}

impl EnvironBuilder {
    /// The `forwarder_headers` fields a trusted peer sent, as `HTTP_*` (Gunicorn's
    /// names); a forwarded `SCRIPT_NAME` also becomes `SCRIPT_NAME`, and the rest of
    /// the path `PATH_INFO` (`begin_call` refused a path outside it).
    #[cold]
    fn add_forwarded(
        &self,
        py: Python<'_>,
        env: &Bound<'_, PyDict>,
        req: &RequestInfo<'_>,
    ) -> PyResult<()> {
        let (bytes, head) = (req.head_bytes, req.head);
        for (name, value) in req.forwarder_headers.forwarded(bytes, head) {
            let key = PyString::new(py, &http_key(name));
            let value = latin1(py, value);
            let stored = set_default(env, &key, &value)?;
            if !stored.is(&value) {
                let joined = format!("{},{}", stored.extract::<String>()?, value.to_cow()?);
                env.set_item(key, joined)?;
            }
        }
        if let Ok(Some((script, rest))) = req.forwarder_headers.script_name(bytes, head) {
            env.set_item(&self.k.script_name, latin1(py, script))?;
            env.set_item(&self.k.path_info, latin1(py, &percent_decode(rest)))?;
        }
        Ok(())
    }
}

/// Entries the roomy template's table holds before it must grow: the template's own
/// 20 plus a browser's or a proxy's worth of headers.
const ROOMY_ENTRIES: isize = 40;
/// Entries a CPython dict table of 32 slots takes (two thirds), the size the small
/// template's table has.
const SMALL_TABLE_ENTRIES: usize = 21;

/// An empty dict whose table takes `entries` entries without growing.
fn presized_dict(py: Python<'_>, entries: isize) -> PyResult<Bound<'_, PyDict>> {
    // SAFETY: _PyDict_NewPresized returns a new reference to an empty dict, or NULL
    // with an exception set, which from_owned_ptr_or_err turns into an error.
    unsafe {
        Ok(
            Bound::from_owned_ptr_or_err(py, pyo3::ffi::_PyDict_NewPresized(entries))?
                .downcast_into_unchecked(),
        )
    }
}

extern "C" {
    // Part of CPython's C API since 2.7; pyo3's bindings do not declare it.
    fn PyDict_SetDefault(
        dict: *mut pyo3::ffi::PyObject,
        key: *mut pyo3::ffi::PyObject,
        default: *mut pyo3::ffi::PyObject,
    ) -> *mut pyo3::ffi::PyObject;
}

/// `dict.setdefault(key, value)`: the value now under `key`, which is `value` unless
/// the key was there already. One lookup, where `get` then `set` takes two.
fn set_default<'py>(
    dict: &Bound<'py, PyDict>,
    key: &Bound<'py, PyString>,
    value: &Bound<'py, PyString>,
) -> PyResult<Bound<'py, PyAny>> {
    // SAFETY: all three are live objects (the GIL is held through them);
    // PyDict_SetDefault returns a borrowed reference, or NULL with an exception set.
    unsafe {
        let stored = PyDict_SetDefault(dict.as_ptr(), key.as_ptr(), value.as_ptr());
        Bound::from_borrowed_ptr_or_err(dict.py(), stored)
    }
}

/// `X-Request-Id` → `HTTP_X_REQUEST_ID` (header names are tokens: ASCII).
fn http_key(name: &[u8]) -> String {
    let mut key = String::with_capacity(5 + name.len());
    key.push_str("HTTP_");
    key.extend(name.iter().map(|b| {
        if *b == b'-' {
            '_'
        } else {
            b.to_ascii_uppercase() as char
        }
    }));
    key
}

/// `host[:port]` or `[v6]:port` → (host, port).
fn split_host(h: &[u8]) -> (&[u8], &[u8]) {
    let colon = if h.first() == Some(&b'[') {
        memchr::memchr(b']', h).and_then(|end| (h.get(end + 1) == Some(&b':')).then_some(end + 1))
    } else {
        memchr::memrchr(b':', h)
    };
    match colon {
        Some(i) => (&h[..i], &h[i + 1..]),
        None => (h, &h[h.len()..]),
    }
}

/// Bytes as a latin-1 `str` (every byte maps to the code point of the same value).
pub fn latin1<'py>(py: Python<'py>, bytes: &[u8]) -> Bound<'py, PyString> {
    // Built directly as a one-byte-per-character string: no UTF-8 decoding. CPython
    // requires pure-ASCII text to use the ASCII kind (maxchar 127).
    let maxchar = if bytes.is_ascii() { 127 } else { 255 };
    // SAFETY: PyUnicode_New returns a new string of `len` one-byte characters (maxchar
    // <= 255) or NULL with an exception set; we fill exactly `len` bytes of its data
    // before anyone else sees it.
    unsafe {
        let obj = pyo3::ffi::PyUnicode_New(bytes.len() as pyo3::ffi::Py_ssize_t, maxchar);
        if obj.is_null() {
            // Out of memory: fall back to the checked path, which reports it properly.
            return PyString::new(py, &latin1_text(bytes));
        }
        std::ptr::copy_nonoverlapping(
            bytes.as_ptr(),
            pyo3::ffi::PyUnicode_1BYTE_DATA(obj),
            bytes.len(),
        );
        Bound::from_owned_ptr(py, obj).downcast_into_unchecked()
    }
}

/// Latin-1 bytes as Rust text (each byte is the code point of the same value).
pub fn latin1_text(bytes: &[u8]) -> String {
    bytes.iter().map(|&b| char::from(b)).collect()
}

pub use crate::http::percent_decode;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_decoding() {
        assert_eq!(&*percent_decode(b"/a%20b%zz%4"), b"/a b%zz%4");
        assert_eq!(&*percent_decode(b"/%C3%A9"), "/é".as_bytes());
    }

    #[test]
    fn host_splitting() {
        assert_eq!(
            split_host(b"example.com:8080"),
            (&b"example.com"[..], &b"8080"[..])
        );
        assert_eq!(split_host(b"[::1]:80"), (&b"[::1]"[..], &b"80"[..]));
        assert_eq!(split_host(b"[::1]"), (&b"[::1]"[..], &b""[..]));
    }
}
