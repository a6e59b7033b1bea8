//! The values Gunicorn's dirty protocol carries, and their binary encoding (type,
//! length, value): none, booleans, 64-bit integers and floats, bytes, UTF-8 strings,
//! lists and string-keyed dictionaries, all big-endian. Sans-I/O: bytes in, values
//! out, every length checked against what is there and against the limits before
//! anything is allocated, so a hostile payload is an error, never a crash.

use thiserror::Error;

const NONE: u8 = 0x00;
const BOOL: u8 = 0x01;
const INT64: u8 = 0x05;
const FLOAT64: u8 = 0x06;
const BYTES: u8 = 0x10;
const STRING: u8 = 0x11;
const LIST: u8 = 0x20;
const DICT: u8 = 0x21;

/// The largest string or bytes value (Gunicorn's limit too).
pub const MAX_BLOB_BYTES: usize = 64 * 1024 * 1024;
/// The most items in one list or dictionary.
pub const MAX_ITEMS: usize = 1024 * 1024;
/// How deep lists and dictionaries may nest: deeper is refused rather than risking
/// the decoder's stack.
pub const MAX_DEPTH: usize = 256;

#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    None,
    Bool(bool),
    Int(i64),
    Float(f64),
    Bytes(Vec<u8>),
    Str(String),
    List(Vec<Value>),
    /// In the order the sender wrote them (Python's dict order).
    Dict(Vec<(String, Value)>),
}

#[derive(Debug, Error, PartialEq)]
pub enum TlvError {
    #[error("truncated value at byte {0}")]
    Truncated(usize),
    #[error("unknown type code 0x{0:02x}")]
    UnknownType(u8),
    #[error("{0} too large")]
    TooLarge(&'static str),
    #[error("string is not UTF-8")]
    NotUtf8,
    #[error("dictionary key is not a string")]
    KeyNotString,
    #[error("nested deeper than {MAX_DEPTH} levels")]
    TooDeep,
    #[error("{0} bytes after the value")]
    Trailing(usize),
}

impl Value {
    pub fn str(s: impl Into<String>) -> Value {
        Value::Str(s.into())
    }

    /// A dictionary from `(key, value)` pairs.
    pub fn dict<const N: usize>(items: [(&str, Value); N]) -> Value {
        Value::Dict(items.into_iter().map(|(k, v)| (k.to_owned(), v)).collect())
    }

    /// A dictionary's entry.
    pub fn get(&self, key: &str) -> Option<&Value> {
        match self {
            Value::Dict(items) => items.iter().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_int(&self) -> Option<i64> {
        match self {
            Value::Int(n) => Some(*n),
            _ => None,
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.encode_into(&mut out);
        out
    }

    pub fn encode_into(&self, out: &mut Vec<u8>) {
        match self {
            Value::None => out.push(NONE),
            Value::Bool(b) => out.extend_from_slice(&[BOOL, u8::from(*b)]),
            Value::Int(n) => {
                out.push(INT64);
                out.extend_from_slice(&n.to_be_bytes());
            }
            Value::Float(f) => {
                out.push(FLOAT64);
                out.extend_from_slice(&f.to_be_bytes());
            }
            Value::Bytes(b) => blob(out, BYTES, b),
            Value::Str(s) => blob(out, STRING, s.as_bytes()),
            Value::List(items) => {
                count(out, LIST, items.len());
                items.iter().for_each(|v| v.encode_into(out));
            }
            Value::Dict(items) => {
                count(out, DICT, items.len());
                for (k, v) in items {
                    blob(out, STRING, k.as_bytes());
                    v.encode_into(out);
                }
            }
        }
    }

    /// Decodes exactly one value filling `data`.
    pub fn decode(data: &[u8]) -> Result<Value, TlvError> {
        let mut reader = Reader { data, at: 0 };
        let value = reader.value(0)?;
        match data.len() - reader.at {
            0 => Ok(value),
            n => Err(TlvError::Trailing(n)),
        }
    }
}

fn blob(out: &mut Vec<u8>, code: u8, bytes: &[u8]) {
    count(out, code, bytes.len());
    out.extend_from_slice(bytes);
}

fn count(out: &mut Vec<u8>, code: u8, n: usize) {
    out.push(code);
    out.extend_from_slice(&u32::try_from(n).unwrap_or(u32::MAX).to_be_bytes());
}

struct Reader<'a> {
    data: &'a [u8],
    at: usize,
}

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8], TlvError> {
        let end = self.at.checked_add(n).filter(|e| *e <= self.data.len());
        let end = end.ok_or(TlvError::Truncated(self.at))?;
        let bytes = &self.data[self.at..end];
        self.at = end;
        Ok(bytes)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], TlvError> {
        Ok(self.take(N)?.try_into().expect("N bytes"))
    }

    fn length(&mut self, limit: usize, what: &'static str) -> Result<usize, TlvError> {
        let n = u32::from_be_bytes(self.array()?) as usize;
        if n > limit {
            return Err(TlvError::TooLarge(what));
        }
        Ok(n)
    }

    fn string(&mut self) -> Result<String, TlvError> {
        let n = self.length(MAX_BLOB_BYTES, "string")?;
        let bytes = self.take(n)?;
        String::from_utf8(bytes.to_vec()).map_err(|_| TlvError::NotUtf8)
    }

    fn value(&mut self, depth: usize) -> Result<Value, TlvError> {
        if depth > MAX_DEPTH {
            return Err(TlvError::TooDeep);
        }
        let [code] = self.array()?;
        Ok(match code {
            NONE => Value::None,
            BOOL => Value::Bool(self.array::<1>()?[0] != 0),
            INT64 => Value::Int(i64::from_be_bytes(self.array()?)),
            FLOAT64 => Value::Float(f64::from_be_bytes(self.array()?)),
            BYTES => {
                let n = self.length(MAX_BLOB_BYTES, "bytes")?;
                Value::Bytes(self.take(n)?.to_vec())
            }
            STRING => Value::Str(self.string()?),
            LIST => {
                let n = self.length(MAX_ITEMS, "list")?;
                // Each item takes at least a byte: no more room than the data has.
                let mut items = Vec::with_capacity(n.min(self.data.len() - self.at));
                for _ in 0..n {
                    items.push(self.value(depth + 1)?);
                }
                Value::List(items)
            }
            DICT => {
                let n = self.length(MAX_ITEMS, "dict")?;
                let mut items = Vec::with_capacity(n.min(self.data.len() - self.at));
                for _ in 0..n {
                    let [code] = self.array()?;
                    if code != STRING {
                        return Err(TlvError::KeyNotString);
                    }
                    let key = self.string()?;
                    items.push((key, self.value(depth + 1)?));
                }
                Value::Dict(items)
            }
            other => return Err(TlvError::UnknownType(other)),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_round_trips() {
        let v = Value::dict([
            ("none", Value::None),
            ("yes", Value::Bool(true)),
            ("n", Value::Int(-42)),
            ("f", Value::Float(0.5)),
            ("raw", Value::Bytes(vec![0, 255])),
            ("s", Value::str("héllo")),
            ("l", Value::List(vec![Value::Int(1), Value::List(vec![])])),
        ]);
        assert_eq!(Value::decode(&v.encode()), Ok(v));
    }

    #[test]
    fn the_wire_form_is_gunicorns() {
        // {"a": 1} as Gunicorn 27's TLVEncoder writes it.
        let bytes = [
            0x21, 0, 0, 0, 1, 0x11, 0, 0, 0, 1, b'a', 0x05, 0, 0, 0, 0, 0, 0, 0, 1,
        ];
        assert_eq!(
            Value::decode(&bytes),
            Ok(Value::dict([("a", Value::Int(1))]))
        );
        assert_eq!(Value::dict([("a", Value::Int(1))]).encode(), bytes);
    }

    #[test]
    fn hostile_payloads_are_errors() {
        assert_eq!(Value::decode(&[]), Err(TlvError::Truncated(0)));
        assert_eq!(Value::decode(&[0x42]), Err(TlvError::UnknownType(0x42)));
        // A list claiming a million items with none there: no huge allocation.
        assert_eq!(
            Value::decode(&[0x20, 0, 0x0f, 0, 0]),
            Err(TlvError::Truncated(5))
        );
        assert_eq!(
            Value::decode(&[0x20, 0xff, 0xff, 0xff, 0xff]),
            Err(TlvError::TooLarge("list"))
        );
        assert_eq!(
            Value::decode(&[0x11, 0, 0, 0, 1, 0xff]),
            Err(TlvError::NotUtf8)
        );
        assert_eq!(
            Value::decode(&[0x21, 0, 0, 0, 1, 0x05]),
            Err(TlvError::KeyNotString)
        );
        assert_eq!(Value::decode(&[0, 0]), Err(TlvError::Trailing(1)));
        let deep: Vec<u8> = std::iter::repeat_n([0x20u8, 0, 0, 0, 1], MAX_DEPTH + 2)
            .flatten()
            .collect();
        assert_eq!(Value::decode(&deep), Err(TlvError::TooDeep));
    }
}
