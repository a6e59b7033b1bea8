//! Fuzzes the control protocol's request parser: any line gives a command or an error
//! answer — never a panic — and the error answer is itself one valid JSON line.

#![no_main]

use libfuzzer_sys::fuzz_target;
use rgunctl::protocol::{error_line, parse_request};

fuzz_target!(|data: &[u8]| {
    if let Err((id, error)) = parse_request(data) {
        let line = error_line(&id, &error);
        assert!(line.ends_with('\n') && !line[..line.len() - 1].contains('\n'));
        let parsed: serde_json::Value = serde_json::from_str(&line).expect("error line is JSON");
        assert!(parsed.get("error").is_some());
    }
});
