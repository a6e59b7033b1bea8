//! `--print-config`: the effective settings printed as Gunicorn prints its own, one
//! `name = value` line per setting or hook, values in Python's spelling.

use std::collections::BTreeMap;

use super::{file, Config};

impl Config {
    /// `--print-config`: every setting rgun knows, hooks included, sorted, one
    /// `name = value` line each with Python's spelling of the value, as Gunicorn prints
    /// its configuration (a hook shows as `<qualified_name()>`).
    pub fn print_config_text(&self, workers: usize) -> String {
        let mut lines: BTreeMap<String, String> = BTreeMap::new();
        if let serde_json::Value::Object(settings) = self.settings_json(workers) {
            for (name, value) in settings {
                lines.insert(name, python_str(&value));
            }
        }
        for (hook, default) in file::HOOKS {
            let shown = if self.hooks.iter().any(|h| h == hook) {
                format!("<{hook}()>")
            } else {
                format!("<{default}()>")
            };
            lines.insert((*hook).to_owned(), shown);
        }
        let width = lines.keys().map(String::len).max().unwrap_or(0);
        let mut text = String::new();
        for (name, value) in lines {
            text.push_str(&format!("{name:<width$} = {value}\n"));
        }
        text
    }
}

/// Python's `str()` of a setting's value: strings bare, `None`, `True`/`False`, and
/// lists and dicts with their items in `repr()` form.
fn python_str(value: &serde_json::Value) -> String {
    match value {
        serde_json::Value::String(s) => s.clone(),
        other => python_repr(other),
    }
}

fn python_repr(value: &serde_json::Value) -> String {
    use serde_json::Value;
    match value {
        Value::Null => "None".into(),
        Value::Bool(true) => "True".into(),
        Value::Bool(false) => "False".into(),
        Value::Number(n) => n.to_string(),
        Value::String(s) => {
            let quote = if s.contains('\'') && !s.contains('"') {
                '"'
            } else {
                '\''
            };
            let mut out = String::from(quote);
            for c in s.chars() {
                match c {
                    '\\' => out.push_str("\\\\"),
                    '\n' => out.push_str("\\n"),
                    c if c == quote => {
                        out.push('\\');
                        out.push(c);
                    }
                    c => out.push(c),
                }
            }
            out.push(quote);
            out
        }
        Value::Array(items) => format!(
            "[{}]",
            items.iter().map(python_repr).collect::<Vec<_>>().join(", ")
        ),
        Value::Object(map) => format!(
            "{{{}}}",
            map.iter()
                .map(|(k, v)| format!(
                    "{}: {}",
                    python_repr(&Value::String(k.clone())),
                    python_repr(v)
                ))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}
