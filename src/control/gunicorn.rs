//! A control connection that speaks Gunicorn's protocol (`gunicornc`): its messages
//! become rgun requests for the arbiter, and the arbiter's answer lines are turned
//! back into Gunicorn's answers. The protocol's types and mapping are
//! `rgunctl::gunicorn`'s; this file only moves bytes between them and the connection.
//! A malformed message gets an error answer and the connection stays usable; a length
//! past the limit cannot be followed, so it is answered and the connection closed.
//! Answers leave in the order of the requests, as Gunicorn answers one at a time: one
//! answered here waits behind those the arbiter has not answered yet.

use rgunctl::gunicorn::{self, Frame, GCommand};
use rgunctl::protocol::ErrorBody;
use serde_json::Value;

use super::{Conn, ConnId, Request};

impl Conn {
    /// Turns the complete messages in `inbuf` into requests (the rest is answered
    /// here). False when the stream cannot be followed any further.
    pub(super) fn take_messages(&mut self, id: ConnId, out: &mut Vec<Request>) -> bool {
        let mut start = 0;
        let followed = loop {
            let (payload, used) = match gunicorn::next_frame(&self.inbuf[start..]) {
                Frame::Incomplete => break true,
                Frame::TooLarge(len) => {
                    let limit = gunicorn::MAX_REQUEST_BYTES;
                    // The connection closes: no answer still awaited will be sent.
                    let error = format!("Message too large: {len} bytes (limit {limit})");
                    self.outbuf
                        .extend_from_slice(&encode(&Value::from(0), Err(error)));
                    break false;
                }
                Frame::Message(payload, used) => (payload.to_vec(), used),
            };
            start += used;
            self.take_message(id, &payload, out);
        };
        self.inbuf.drain(..start);
        followed
    }

    fn take_message(&mut self, id: ConnId, payload: &[u8], out: &mut Vec<Request>) {
        let (req_id, command) = match gunicorn::parse_request(payload) {
            Ok(parsed) => parsed,
            Err((req_id, error)) => return self.send_message(&req_id, Err(error)),
        };
        if !self.allowed {
            let error = format!("uid {} may not control this daemon", self.uid);
            return self.send_message(&req_id, Err(error));
        }
        match command.rgun_command() {
            None => self.send_message(&req_id, Ok(command.local_answer())),
            Some(rgun) => {
                self.pending
                    .push_back((req_id.clone(), Answer::Waiting(command)));
                out.push(Request {
                    conn: id,
                    id: req_id,
                    command: rgun,
                    uid: self.uid,
                });
            }
        }
    }

    /// The arbiter's answer line to one of this connection's requests, as Gunicorn's
    /// answer to the command it came from.
    pub(super) fn answer_gunicorn(&mut self, line: &str) {
        let Ok(answer) = serde_json::from_str::<Value>(line) else {
            return;
        };
        let id = answer.get("id").cloned().unwrap_or(Value::Null);
        let waiting = self
            .pending
            .iter_mut()
            .find_map(|(pending, answer)| match answer {
                Answer::Waiting(command) if *pending == id => Some((*command, answer)),
                _ => None,
            });
        let Some((command, slot)) = waiting else {
            return; // not an answer to a Gunicorn request (none other is sent here)
        };
        let error: Option<ErrorBody> = answer
            .get("error")
            .and_then(|e| serde_json::from_value(e.clone()).ok());
        let data = match (&error, answer.get("result")) {
            (Some(error), _) => command.answer(Err(error)),
            (None, Some(result)) => command.answer(Ok(result)),
            (None, None) => Err("the master's answer has no result".into()),
        };
        *slot = Answer::Ready(encode(&id, data));
        while let Some((_, Answer::Ready(_))) = self.pending.front() {
            if let Some((_, Answer::Ready(bytes))) = self.pending.pop_front() {
                self.outbuf.extend_from_slice(&bytes);
            }
        }
    }

    /// Answers now, or behind the answers still awaited from the arbiter.
    fn send_message(&mut self, id: &Value, data: Result<Value, String>) {
        let bytes = encode(id, data);
        if self.pending.is_empty() {
            self.outbuf.extend_from_slice(&bytes);
        } else {
            self.pending.push_back((id.clone(), Answer::Ready(bytes)));
        }
    }
}

fn encode(id: &Value, data: Result<Value, String>) -> Vec<u8> {
    let message = match data {
        Ok(data) => gunicorn::ok_message(id, data),
        Err(error) => gunicorn::error_message(id, &error),
    };
    gunicorn::encode(&message)
}

/// A request's answer, in request order: awaited from the arbiter, or ready to send.
#[derive(Clone, serde::Serialize, serde::Deserialize)]
pub enum Answer {
    Waiting(GCommand),
    Ready(Vec<u8>),
}

/// The connection's Gunicorn requests whose answers have not been sent, oldest first.
pub type Pending = std::collections::VecDeque<(Value, Answer)>;
