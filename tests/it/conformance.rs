//! Gunicorn's request-parsing vectors (`tests/data/gunicorn-requests.json`, MIT, see
//! its README) replayed over real TCP against a real rgun running the echo app.
//!
//! A valid case must reach the application as the listed requests; an invalid case must
//! get a 4xx or a closed connection without reaching it, and the server must keep
//! serving. Cases needing settings rgun does not have are reported as skipped.

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

#[test]
fn gunicorn_request_vectors_over_tcp() {
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
            Some(flags) => groups.entry(flags).or_default().push(case),
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
            let result = if case["kind"] == "valid" {
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
