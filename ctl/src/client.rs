//! A blocking client for the control socket: connect, send one request line, read one
//! response line, with a time limit on each.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{Map, Value};

use crate::protocol::{request_line, ErrorBody, MAX_LINE_BYTES};

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot connect to {path}: {source}")]
    Connect {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("control socket I/O failed: {0}")]
    Io(#[from] std::io::Error),
    #[error("the daemon closed the connection without answering")]
    Closed,
    #[error("invalid response from the daemon: {0}")]
    BadResponse(String),
}

pub struct Client {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
    next_id: u64,
}

impl Client {
    pub fn connect(path: &Path, timeout: Option<Duration>) -> Result<Client, ClientError> {
        let stream = UnixStream::connect(path).map_err(|source| ClientError::Connect {
            path: path.to_owned(),
            source,
        })?;
        stream.set_read_timeout(timeout)?;
        stream.set_write_timeout(timeout)?;
        Ok(Client {
            reader: BufReader::new(stream.try_clone()?),
            writer: stream,
            next_id: 1,
        })
    }

    /// The next line the daemon sends unasked (a `watch` event); `None` once it has
    /// closed the connection.
    pub fn next_event(&mut self) -> Result<Option<Value>, ClientError> {
        let mut line = String::new();
        let n = (&mut self.reader)
            .take(MAX_LINE_BYTES as u64 * 64)
            .read_line(&mut line)?;
        if n == 0 {
            return Ok(None);
        }
        serde_json::from_str(&line)
            .map(Some)
            .map_err(|e| ClientError::BadResponse(e.to_string()))
    }

    /// Sends `cmd` with `args`; `Ok(Err(..))` is the daemon's error answer.
    pub fn call(
        &mut self,
        cmd: &str,
        args: Map<String, Value>,
    ) -> Result<Result<Value, ErrorBody>, ClientError> {
        let id = self.next_id;
        self.next_id += 1;
        self.writer
            .write_all(request_line(id, cmd, args).as_bytes())?;
        let mut line = String::new();
        let n = (&mut self.reader)
            .take(MAX_LINE_BYTES as u64 * 64)
            .read_line(&mut line)?;
        if n == 0 {
            return Err(ClientError::Closed);
        }
        let response: Value =
            serde_json::from_str(&line).map_err(|e| ClientError::BadResponse(e.to_string()))?;
        match response.get("ok").and_then(Value::as_bool) {
            Some(true) => Ok(Ok(response.get("result").cloned().unwrap_or(Value::Null))),
            Some(false) => {
                let error = response.get("error").cloned().unwrap_or(Value::Null);
                serde_json::from_value(error)
                    .map(Err)
                    .map_err(|e| ClientError::BadResponse(e.to_string()))
            }
            None => Err(ClientError::BadResponse(line.trim_end().to_owned())),
        }
    }
}
