//! A worker's `stack` answer as text (each thread, the request it serves, its
//! stack), printed by `rgunctl stack` and shown by `rgunctl top`.

use serde_json::Value;

/// One worker's `stack` answer: each thread, the request it serves, its stack.
pub(crate) fn print_stacks(out: &mut String, worker: &Value) {
    w!(out, "worker {}", worker["pid"]);
    if let Some(error) = worker["error"].as_str() {
        w!(out, "  cannot get its stacks: {error}");
        return;
    }
    for t in worker["threads"].as_array().into_iter().flatten() {
        let r = &t["request"];
        let serving = if r.is_object() {
            format!(
                ", serving {} {} for {} ({} s)",
                r["method"].as_str().unwrap_or(""),
                r["path"].as_str().unwrap_or(""),
                r["client"]
                    .as_str()
                    .filter(|c| !c.is_empty())
                    .unwrap_or("a local client"),
                r["age_s"]
            )
        } else {
            String::new()
        };
        w!(
            out,
            "\nThread {} ({}){serving}, most recent call last:",
            t["name"].as_str().unwrap_or("?"),
            t["ident"]
        );
        out.push_str(t["stack"].as_str().unwrap_or(""));
    }
    w!(out, "");
}
