//! Gunicorn's request-parsing vectors (`tests/data/gunicorn-requests.json`, MIT, see
//! its README) replayed over real TCP against a real rgun running the echo app.
//!
//! A valid case must reach the application as the listed requests; an invalid case must
//! get a 4xx or a closed connection without reaching it, and the server must keep
//! serving. Cases needing settings rgun does not have are reported as skipped. The
//! vectors run again with every lenient-parsing switch on, beside a set of smuggling
//! attempts hidden behind folded and spaced fields, with the switches off and on.

use std::collections::BTreeMap;
use std::io::{BufReader, Write};

use base64::Engine;
use serde_json::Value;

use crate::support::{read_response, Server, ServerBuilder};

/// Settings we can express as rgun flags; anything else skips the case.
fn flags_for(settings: &serde_json::Map<String, Value>) -> Option<Vec<String>> {
    let mut flags = Vec::new();
    for (k, v) in settings {
        let flag = match k.as_str() {
            "limit_request_line" => "--limit-request-line",
            "limit_request_fields" => "--limit-request-fields",
            "limit_request_field_size" => "--limit-request-field_size",
            "proxy_protocol" => {
                flags.push("--proxy-protocol".into());
                flags.push(v.as_str()?.to_owned());
                continue;
            }
            "permit_obsolete_folding"
            | "strip_header_spaces"
            | "permit_unconventional_http_method"
            | "permit_unconventional_http_version"
            | "casefold_http_method" => {
                if v.as_bool()? {
                    flags.push(format!("--{}", k.replace('_', "-")));
                }
                continue;
            }
            "forwarded_allow_ips" => {
                let ips: Vec<String> = v
                    .as_array()?
                    .iter()
                    .filter_map(|x| x.as_str().map(String::from))
                    .collect();
                flags.push("--forwarded-allow-ips".into());
                flags.push(ips.join(","));
                continue;
            }
            _ => return None,
        };
        flags.push(flag.into());
        flags.push(v.as_i64()?.to_string());
    }
    Some(flags)
}

fn latin1(bytes: &[u8]) -> String {
    bytes.iter().map(|&b| char::from(b)).collect()
}

fn percent_decode(s: &str) -> String {
    let bytes: Vec<u8> = s.chars().map(|c| c as u32 as u8).collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let Ok(b) = u8::from_str_radix(&String::from_utf8_lossy(&bytes[i + 1..i + 3]), 16) {
                out.push(b);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    latin1(&out)
}

/// The environ header entries the echo app should report for a vector's headers.
fn expected_headers(headers: &[Value]) -> BTreeMap<String, String> {
    let mut map: BTreeMap<String, String> = BTreeMap::new();
    for h in headers {
        let name = h[0].as_str().unwrap();
        let value = h[1].as_str().unwrap();
        let key = match name {
            "CONTENT-TYPE" => "CONTENT_TYPE".to_owned(),
            "CONTENT-LENGTH" => "CONTENT_LENGTH".to_owned(),
            n => format!("HTTP_{}", n.replace('-', "_")),
        };
        map.entry(key)
            .and_modify(|v| *v = format!("{v},{value}"))
            .or_insert_with(|| value.to_owned());
    }
    map
}

fn check_valid(server: &Server, case: &Value, raw: &[u8]) -> Result<(), String> {
    let mut s = server.connect();
    s.write_all(raw).map_err(|e| e.to_string())?;
    let _ = s.shutdown(std::net::Shutdown::Write);
    let mut reader = BufReader::new(s);
    for (i, want) in case["requests"].as_array().unwrap().iter().enumerate() {
        let resp =
            read_response(&mut reader, false).ok_or(format!("no response to request {i}"))?;
        if resp.status != 200 {
            return Err(format!(
                "request {i}: status {} {}",
                resp.status,
                resp.text()
            ));
        }
        let got = resp.json();
        let method = want["method"].as_str().unwrap();
        if got["method"] != method {
            return Err(format!("method {} != {method}", got["method"]));
        }
        let uri = &want["uri"];
        if got["raw_uri"] != uri["raw"] {
            return Err(format!("RAW_URI {} != {}", got["raw_uri"], uri["raw"]));
        }
        if got["query"] != uri["query"] {
            return Err(format!("QUERY_STRING {} != {}", got["query"], uri["query"]));
        }
        let path = uri["path"].as_str().unwrap();
        if path.starts_with('/') && got["path_info"] != percent_decode(path).as_str() {
            return Err(format!("PATH_INFO {} != {path}", got["path_info"]));
        }
        let version = format!("HTTP/{}.{}", want["version"][0], want["version"][1]);
        if got["protocol"] != version.as_str() {
            return Err(format!("protocol {} != {version}", got["protocol"]));
        }
        let want_headers = expected_headers(want["headers"].as_array().unwrap());
        let got_headers: BTreeMap<String, String> = got["headers"]
            .as_object()
            .unwrap()
            .iter()
            .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_owned()))
            .collect();
        if got_headers != want_headers {
            return Err(format!("headers {got_headers:?} != {want_headers:?}"));
        }
        let body = base64::engine::general_purpose::STANDARD
            .decode(want["body_b64"].as_str().unwrap())
            .unwrap();
        if got["body"] != latin1(&body).as_str() {
            return Err(format!("body {} != {:?}", got["body"], latin1(&body)));
        }
    }
    if let Some(extra) = read_response(&mut reader, false) {
        return Err(format!(
            "unexpected extra response {} {}",
            extra.status,
            extra.text()
        ));
    }
    Ok(())
}

/// An invalid case a lenient switch accepts: it reaches the application (200).
fn check_accepted(server: &Server, raw: &[u8]) -> Result<(), String> {
    let mut s = server.connect();
    s.write_all(raw).map_err(|e| e.to_string())?;
    match read_response(&mut BufReader::new(s), false) {
        Some(r) if r.status == 200 => Ok(()),
        Some(r) => Err(format!("status {} {}", r.status, r.text())),
        None => Err("no response".into()),
    }
}

fn check_invalid(server: &Server, raw: &[u8]) -> Result<(), String> {
    let mut s = server.connect();
    let _ = s.write_all(raw);
    let _ = s.shutdown(std::net::Shutdown::Write);
    let mut reader = BufReader::new(s);
    if let Some(resp) = read_response(&mut reader, false) {
        if !(400..500).contains(&resp.status) {
            return Err(format!(
                "status {} (the app was reached?) {}",
                resp.status,
                resp.text()
            ));
        }
    }
    Ok(())
}

/// Gunicorn's lenient-parsing switches, all on.
const LENIENT: [&str; 5] = [
    "--permit-obsolete-folding",
    "--strip-header-spaces",
    "--permit-unconventional-http-method",
    "--permit-unconventional-http-version",
    "--casefold-http-method",
];

/// Cases checked only as accepted (200) with every switch on: the invalid ones the
/// switches are there to accept — a 2-character method, a space before the colon, a
/// folded field, `HTTP/2.0` — exactly those Gunicorn 27 accepts with the same switches
/// (of the invalid cases without settings of their own); and one valid case whose
/// listed method is in lower case, which `--casefold-http-method` upper-cases.
/// Every other invalid case stays refused with all on.
const LENIENT_ACCEPTS: &[&str] = &[
    "invalid/003c",
    "invalid/020",
    "invalid/obs_fold_01",
    "invalid/version_02",
    "valid/031compat2",
];

#[test]
fn gunicorn_request_vectors_over_tcp() {
    replay_vectors(&[], &[]);
}

/// The same vectors with every lenient switch on: the valid ones still reach the
/// application as Gunicorn's listed requests, and every invalid one but those the
/// switches exist for is still refused (the smuggling rules above all).
#[test]
fn gunicorn_request_vectors_with_every_lenient_switch_on() {
    replay_vectors(&LENIENT, LENIENT_ACCEPTS);
}

fn replay_vectors(extra_flags: &[&str], now_valid: &[&str]) {
    let data: Value = serde_json::from_str(include_str!("../data/gunicorn-requests.json")).unwrap();
    let cases = data["cases"].as_array().unwrap();
    let mut groups: BTreeMap<Vec<String>, Vec<&Value>> = BTreeMap::new();
    let mut skipped = Vec::new();
    for case in cases {
        let name = case["name"].as_str().unwrap();
        // Declares more body than it carries: cannot be replayed over a socket.
        if name == "valid/099" {
            skipped.push(name.to_owned());
            continue;
        }
        match flags_for(case["settings"].as_object().unwrap()) {
            Some(mut flags) => {
                for f in extra_flags {
                    if !flags.iter().any(|have| have == f) {
                        flags.push(f.to_string());
                    }
                }
                groups.entry(flags).or_default().push(case)
            }
            None => skipped.push(name.to_owned()),
        }
    }
    let mut failures = Vec::new();
    let mut passed = 0;
    for (flags, cases) in &groups {
        let server = ServerBuilder::new("echo:application")
            .args(flags.clone())
            .start();
        for case in cases {
            let name = case["name"].as_str().unwrap();
            let raw = base64::engine::general_purpose::STANDARD
                .decode(case["raw_b64"].as_str().unwrap())
                .unwrap();
            let result = if now_valid.contains(&name) {
                check_accepted(&server, &raw)
            } else if case["kind"] == "valid" {
                check_valid(&server, case, &raw)
            } else {
                check_invalid(&server, &raw)
            };
            match result {
                Ok(()) => passed += 1,
                Err(e) => failures.push(format!(
                    "{name}: {}",
                    e.chars().take(300).collect::<String>()
                )),
            }
            // The server keeps serving after every case.
            let after = server.request(b"GET /after HTTP/1.0\r\n\r\n");
            if after.status != 200 {
                failures.push(format!(
                    "{name}: server did not answer afterwards ({})",
                    after.status
                ));
            }
        }
        assert!(!server.log().contains("panicked"), "{}", server.log());
    }
    eprintln!(
        "conformance: {passed} passed, {} skipped ({})",
        skipped.len(),
        skipped.join(", ")
    );
    assert!(
        failures.is_empty(),
        "{} failures:\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert_eq!(
        passed + skipped.len(),
        cases.len(),
        "every case ran or was skipped"
    );
}

/// Request-smuggling attempts, each with a second request hidden behind it: refused
/// (400 or closed) without the hidden request ever reaching the application, with the
/// lenient switches off and with all of them on — no switch loosens Content-Length
/// with Transfer-Encoding, a duplicate Content-Length, chunked not last, bare LF, or a
/// control byte in a value, however the field is folded or spaced.
#[test]
fn smuggling_attempts_are_refused_with_the_lenient_switches_off_and_on() {
    const HIDDEN: &str = "GET /smuggled HTTP/1.1\r\nHost: h\r\n\r\n";
    let attempts: &[&str] = &[
        "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 4\r\nContent-Length: 40\r\n\r\n",
        "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n",
        "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        // Folded into another field, or folded itself.
        "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 4\r\n Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n ,identity\r\n\r\n0\r\n\r\n",
        "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding:\r\n chunked\r\nContent-Length: 4\r\n\r\n0\r\n\r\n",
        "POST / HTTP/1.1\r\nHost: h\r\nContent-Length:\r\n 4\r\nContent-Length: 40\r\n\r\n",
        "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding\r\n : chunked\r\nContent-Length: 4\r\n\r\n0\r\n\r\n",
        // Spaces before the colon.
        "POST / HTTP/1.1\r\nHost: h\r\nContent-Length : 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding\t: chunked\r\nContent-Length: 4\r\n\r\n0\r\n\r\n",
        // Bare LF, CR and NUL, folded or not.
        "POST / HTTP/1.1\r\nHost: h\r\nX: a\n Transfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n0\r\n\r\n",
        "POST / HTTP/1.1\nHost: h\r\nContent-Length: 4\r\n\r\n",
        "POST / HTTP/1.1\r\nHost: h\r\nX: a\r\n b\rTransfer-Encoding: chunked\r\n\r\n",
        "POST / HTTP/1.1\r\nHost: h\r\nX: a\r\n b\0c\r\nContent-Length: 4\r\n\r\n",
        // An unconventional method or version does not make the framing looser.
        "post / HTTP/1.5\r\nHost: h\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        "GET / HTTP/0.9\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    ];
    for flags in [&[][..], &LENIENT[..]] {
        let server = ServerBuilder::new("echo:application")
            .args(flags.iter().copied())
            .start();
        for attempt in attempts {
            let raw = format!("{attempt}{HIDDEN}");
            let mut s = server.connect();
            let _ = s.write_all(raw.as_bytes());
            let _ = s.shutdown(std::net::Shutdown::Write);
            let mut reader = BufReader::new(s);
            let first = read_response(&mut reader, false);
            assert!(
                first.as_ref().is_none_or(|r| r.status == 400),
                "{flags:?} {attempt:?}: {:?}",
                first.map(|r| (r.status, r.text()))
            );
            assert!(
                read_response(&mut reader, false).is_none(),
                "{flags:?} {attempt:?}: a second response"
            );
        }
        let seen = server.access_log();
        assert!(!seen.contains("/smuggled"), "{flags:?}: {seen}");
        assert_eq!(server.get("/after").status, 200);
    }
}
