//! The stash: named tables of key → value that every dirty worker and HTTP worker
//! reaches through the router (`gunicorn.dirty.stash`), as in Gunicorn — in the
//! router's memory, gone when it ends. Tables and keys keep their insertion order, as
//! Python dictionaries do. Pure: an operation's payload in, its answer out.

use indexmap::IndexMap;

use super::super::errors::DirtyErrorKind;
use super::super::tlv::Value;

const PUT: i64 = 1;
const GET: i64 = 2;
const DELETE: i64 = 3;
const KEYS: i64 = 4;
const CLEAR: i64 = 5;
const INFO: i64 = 6;
const ENSURE: i64 = 7;
const DELETE_TABLE: i64 = 8;
const TABLES: i64 = 9;
const EXISTS: i64 = 10;

/// A table: keys by their encoding (keys are any value the protocol carries).
type Table = IndexMap<Vec<u8>, (Value, Value)>;

#[derive(Debug, Default)]
pub struct Stash {
    tables: IndexMap<String, Table>,
}

/// What an operation answers: a value, or an error for the caller.
pub type Answer = Result<Value, (DirtyErrorKind, String)>;

impl Stash {
    /// One stash operation (`op`, `table`, and `key`, `value`, `pattern` as it needs).
    pub fn apply(&mut self, op: &Value) -> Answer {
        let table = op.get("table").and_then(Value::as_str).unwrap_or("");
        let key = op.get("key").cloned().unwrap_or(Value::None);
        let code = op.get("op").and_then(Value::as_int).unwrap_or(0);
        let found = self.tables.get(table);
        Ok(match code {
            PUT => {
                let value = op.get("value").cloned().unwrap_or(Value::None);
                let t = self.tables.entry(table.to_owned()).or_default();
                t.insert(key.encode(), (key, value));
                Value::Bool(true)
            }
            GET => match found.and_then(|t| t.get(&key.encode())) {
                Some((_, v)) => v.clone(),
                None => {
                    return Err((
                        DirtyErrorKind::StashKeyNotFound,
                        format!("Key not found: {}", python_str(&key)),
                    ))
                }
            },
            DELETE => Value::Bool(
                self.tables
                    .get_mut(table)
                    .and_then(|t| t.shift_remove(&key.encode()))
                    .is_some(),
            ),
            KEYS => {
                let pattern = op.get("pattern").and_then(Value::as_str);
                Value::List(
                    found
                        .into_iter()
                        .flat_map(|t| t.values())
                        .filter(|(k, _)| pattern.is_none_or(|p| glob(p, &python_str(k))))
                        .map(|(k, _)| k.clone())
                        .collect(),
                )
            }
            CLEAR => {
                if let Some(t) = self.tables.get_mut(table) {
                    t.clear();
                }
                Value::Bool(true)
            }
            INFO => match found {
                Some(t) => Value::dict([
                    ("size", Value::Int(t.len() as i64)),
                    ("table", Value::str(table)),
                ]),
                None => {
                    return Err((
                        DirtyErrorKind::StashTableNotFound,
                        format!("Table not found: {table}"),
                    ))
                }
            },
            ENSURE => {
                self.tables.entry(table.to_owned()).or_default();
                Value::Bool(true)
            }
            DELETE_TABLE => Value::Bool(self.tables.shift_remove(table).is_some()),
            TABLES => Value::List(self.tables.keys().map(Value::str).collect()),
            EXISTS => Value::Bool(match (found, &key) {
                (None, _) => false,
                (Some(_), Value::None) => true,
                (Some(t), key) => t.contains_key(&key.encode()),
            }),
            other => {
                return Err((
                    DirtyErrorKind::Dirty,
                    format!("Unknown stash operation: {other}"),
                ))
            }
        })
    }
}

/// A value as Python's `str()` writes it, for messages and key patterns.
fn python_str(v: &Value) -> String {
    match v {
        Value::None => "None".into(),
        Value::Bool(true) => "True".into(),
        Value::Bool(false) => "False".into(),
        Value::Int(n) => n.to_string(),
        Value::Float(f) => format!("{f:?}"),
        Value::Str(s) => s.clone(),
        Value::Bytes(b) => format!("b{:?}", String::from_utf8_lossy(b)),
        Value::List(_) | Value::Dict(_) => format!("{v:?}"),
    }
}

/// Shell-style matching as Python's `fnmatch` does it on POSIX: `*`, `?`, `[seq]`,
/// `[!seq]` (with ranges), everything else literal.
fn glob(pattern: &str, text: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let t: Vec<char> = text.chars().collect();
    // Iterative matching with one backtrack point for the last `*`.
    let (mut pi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        let step = match p.get(pi) {
            Some('*') => {
                star = Some((pi, ti));
                pi += 1;
                continue;
            }
            Some('?') => Some(pi + 1),
            Some('[') => class(&p, pi, t[ti]),
            Some(c) if *c == t[ti] => Some(pi + 1),
            _ => None,
        };
        match (step, star) {
            (Some(next), _) => {
                pi = next;
                ti += 1;
            }
            (None, Some((sp, st))) => {
                pi = sp + 1;
                ti = st + 1;
                star = Some((sp, st + 1));
            }
            (None, None) => return false,
        }
    }
    p[pi..].iter().all(|c| *c == '*')
}

/// A `[...]` class at `at` against `c`: the index after it when `c` matches. An
/// unclosed `[` is a literal, as in fnmatch.
fn class(p: &[char], at: usize, c: char) -> Option<usize> {
    let mut i = at + 1;
    let negate = p.get(i) == Some(&'!');
    if negate {
        i += 1;
    }
    let start = i;
    let mut matched = false;
    while i < p.len() && (p[i] != ']' || i == start) {
        if i + 2 < p.len() && p[i + 1] == '-' && p[i + 2] != ']' {
            matched |= p[i] <= c && c <= p[i + 2];
            i += 3;
        } else {
            matched |= p[i] == c;
            i += 1;
        }
    }
    if i >= p.len() {
        return (c == '[').then_some(at + 1);
    }
    (matched != negate).then_some(i + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(code: i64, table: &str, key: Option<Value>, value: Option<Value>) -> Value {
        let mut items = vec![
            ("op".to_owned(), Value::Int(code)),
            ("table".to_owned(), Value::str(table)),
        ];
        items.extend(key.map(|k| ("key".to_owned(), k)));
        items.extend(value.map(|v| ("value".to_owned(), v)));
        Value::Dict(items)
    }

    #[test]
    fn tables_behave_like_gunicorns() {
        let mut s = Stash::default();
        let k = |s: &str| Some(Value::str(s));
        assert_eq!(
            s.apply(&op(EXISTS, "t", None, None)),
            Ok(Value::Bool(false))
        );
        s.apply(&op(PUT, "t", k("user:2"), Some(Value::Int(2))))
            .unwrap();
        s.apply(&op(PUT, "t", k("user:1"), Some(Value::Int(1))))
            .unwrap();
        s.apply(&op(PUT, "t", k("other"), None)).unwrap();
        assert_eq!(s.apply(&op(GET, "t", k("other"), None)), Ok(Value::None));
        assert_eq!(
            s.apply(&op(GET, "t", k("nope"), None)).unwrap_err().0,
            DirtyErrorKind::StashKeyNotFound
        );
        let mut keys = op(KEYS, "t", None, None);
        if let Value::Dict(items) = &mut keys {
            items.push(("pattern".into(), Value::str("user:*")));
        }
        assert_eq!(
            s.apply(&keys),
            Ok(Value::List(vec![
                Value::str("user:2"),
                Value::str("user:1")
            ]))
        );
        assert_eq!(
            s.apply(&op(DELETE, "t", k("user:2"), None)),
            Ok(Value::Bool(true))
        );
        assert_eq!(
            s.apply(&op(DELETE, "t", k("user:2"), None)),
            Ok(Value::Bool(false))
        );
        assert_eq!(
            s.apply(&op(INFO, "t", None, None)),
            Ok(Value::dict([
                ("size", Value::Int(2)),
                ("table", Value::str("t"))
            ]))
        );
        assert_eq!(
            s.apply(&op(TABLES, "", None, None)),
            Ok(Value::List(vec![Value::str("t")]))
        );
        assert_eq!(
            s.apply(&op(DELETE_TABLE, "t", None, None)),
            Ok(Value::Bool(true))
        );
        assert!(s.apply(&op(INFO, "t", None, None)).is_err());
        assert!(s.apply(&op(99, "t", None, None)).is_err());
    }

    #[test]
    fn glob_matches_as_fnmatch() {
        assert!(glob("user:*", "user:1"));
        assert!(!glob("user:*", "admin:1"));
        assert!(glob("a?c", "abc"));
        assert!(glob("*b*", "abc"));
        assert!(glob("[a-c]x", "bx"));
        assert!(!glob("[!a-c]x", "bx"));
        assert!(glob("[x", "[x"));
        assert!(glob("*", ""));
        assert!(!glob("a", ""));
    }
}
