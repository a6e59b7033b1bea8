//! WebSocket (RFC 6455), sans I/O: recognising an upgrade request and answering its
//! handshake (`upgrade_request`, `accept_key`); `Decoder` turns a client's bytes into
//! messages (fragments reassembled, control frames as they come) or the error that
//! must close the connection, with the RFC's close code; `encode_frame` and
//! `encode_close` write the server's frames. No sockets, no Python, no extensions
//! (a reserved bit set is a protocol error until permessage-deflate is negotiated).

use super::head::RequestHead;

/// What an upgrade request asks for.
#[derive(Debug, PartialEq, Eq)]
pub struct UpgradeRequest {
    /// `Sec-WebSocket-Key`, as sent.
    pub key: Vec<u8>,
    /// `Sec-WebSocket-Protocol` values, in order.
    pub subprotocols: Vec<String>,
    /// `Sec-WebSocket-Extensions` header values, in order (`ws_deflate::negotiate`).
    pub extensions: Vec<Vec<u8>>,
}

/// A WebSocket opening handshake (RFC 6455 4.2.1): `GET`, HTTP/1.1, `Upgrade:
/// websocket`, `Connection: upgrade` among its tokens, version 13 and a key. `None`
/// for any other request (served as plain HTTP).
pub fn upgrade_request(head: &RequestHead, bytes: &[u8]) -> Option<UpgradeRequest> {
    if &bytes[head.method.clone()] != b"GET" || head.minor_version < 1 {
        return None;
    }
    let (mut upgrade, mut connection, mut version) = (false, false, false);
    let mut key = None;
    let mut subprotocols = Vec::new();
    let mut extensions = Vec::new();
    for (name, value) in &head.headers {
        let name = &bytes[name.clone()];
        let value = &bytes[value.clone()];
        let tokens = || {
            value
                .split(|&b| b == b',')
                .map(|t| t.trim_ascii())
                .filter(|t| !t.is_empty())
        };
        if name.eq_ignore_ascii_case(b"upgrade") {
            upgrade |= tokens().any(|t| t.eq_ignore_ascii_case(b"websocket"));
        } else if name.eq_ignore_ascii_case(b"connection") {
            connection |= tokens().any(|t| t.eq_ignore_ascii_case(b"upgrade"));
        } else if name.eq_ignore_ascii_case(b"sec-websocket-version") {
            version = value.trim_ascii() == b"13";
        } else if name.eq_ignore_ascii_case(b"sec-websocket-key") {
            key = Some(value.trim_ascii().to_vec());
        } else if name.eq_ignore_ascii_case(b"sec-websocket-extensions") {
            extensions.push(value.to_vec());
        } else if name.eq_ignore_ascii_case(b"sec-websocket-protocol") {
            subprotocols.extend(tokens().map(|t| String::from_utf8_lossy(t).into_owned()));
        }
    }
    let key = key.filter(|k| !k.is_empty())?;
    (upgrade && connection && version).then_some(UpgradeRequest {
        key,
        subprotocols,
        extensions,
    })
}

/// `Sec-WebSocket-Accept` for a `Sec-WebSocket-Key`.
pub fn accept_key(key: &[u8]) -> String {
    use base64::Engine;
    let mut sha = sha1_smol::Sha1::new();
    sha.update(key);
    sha.update(b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11");
    base64::engine::general_purpose::STANDARD.encode(sha.digest().bytes())
}

/// The longest payload a control frame (close, ping, pong) may carry.
pub const MAX_CONTROL_PAYLOAD_BYTES: usize = 125;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Opcode {
    Continuation,
    Text,
    Binary,
    Close,
    Ping,
    Pong,
}

impl Opcode {
    fn from_bits(bits: u8) -> Option<Opcode> {
        Some(match bits {
            0x0 => Opcode::Continuation,
            0x1 => Opcode::Text,
            0x2 => Opcode::Binary,
            0x8 => Opcode::Close,
            0x9 => Opcode::Ping,
            0xA => Opcode::Pong,
            _ => return None,
        })
    }

    fn bits(self) -> u8 {
        match self {
            Opcode::Continuation => 0x0,
            Opcode::Text => 0x1,
            Opcode::Binary => 0x2,
            Opcode::Close => 0x8,
            Opcode::Ping => 0x9,
            Opcode::Pong => 0xA,
        }
    }

    fn is_control(self) -> bool {
        matches!(self, Opcode::Close | Opcode::Ping | Opcode::Pong)
    }
}

/// A complete message, or a control frame, from the client.
#[derive(Debug, PartialEq, Eq)]
pub enum Message {
    Text(String),
    Binary(Vec<u8>),
    Ping(Vec<u8>),
    Pong(Vec<u8>),
    /// The client's close code and reason, if it sent one.
    Close(Option<(u16, String)>),
}

/// Why the connection must be closed; `close_code` is what the server sends.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WsError {
    #[error("WebSocket protocol error: {0}")]
    Protocol(&'static str),
    #[error("invalid UTF-8 in a text message or close reason")]
    InvalidUtf8,
    #[error("WebSocket message larger than the limit")]
    TooBig,
}

impl WsError {
    /// The one place framing errors become close codes (RFC 6455 7.4.1).
    pub fn close_code(&self) -> u16 {
        match self {
            WsError::Protocol(_) => 1002,
            WsError::InvalidUtf8 => 1007,
            WsError::TooBig => 1009,
        }
    }
}

/// Reassembles a client's frames into messages, within a message-size limit.
pub struct Decoder {
    max_message_bytes: usize,
    /// A fragmented data message under way: its opcode, the payload so far, and
    /// whether it is compressed (RSV1 on its first frame).
    partial: Option<(Opcode, Vec<u8>, bool)>,
    /// permessage-deflate was negotiated: RSV1 marks a compressed message.
    deflate: bool,
}

impl Decoder {
    pub fn new(max_message_bytes: usize) -> Decoder {
        Decoder {
            max_message_bytes,
            partial: None,
            deflate: false,
        }
    }

    /// permessage-deflate was negotiated (`http::ws_deflate`).
    pub fn set_deflate(&mut self, on: bool) {
        self.deflate = on;
    }

    /// Decodes from the front of `buf`: the next message or control frame (if
    /// complete) and how many bytes were consumed (fragments folded into a message
    /// under way count as consumed). `(None, n)`: more bytes are needed.
    pub fn decode(&mut self, buf: &[u8]) -> Result<(Option<Message>, usize), WsError> {
        let mut consumed = 0;
        loop {
            let Some(frame) = self.frame(&buf[consumed..])? else {
                return Ok((None, consumed));
            };
            consumed += frame.header_len + frame.payload_len;
            let start = consumed - frame.payload_len;
            let mut payload = buf[start..consumed].to_vec();
            unmask(&mut payload, frame.mask);
            if let Some(message) = self.take(&frame, payload)? {
                return Ok((Some(message), consumed));
            }
        }
    }

    /// Parses one frame's header and checks it can be accepted; `None` until the
    /// whole frame is in `buf`.
    fn frame(&self, buf: &[u8]) -> Result<Option<Frame>, WsError> {
        if buf.len() < 2 {
            return Ok(None);
        }
        let (b0, b1) = (buf[0], buf[1]);
        let opcode = Opcode::from_bits(b0 & 0x0F).ok_or(WsError::Protocol("reserved opcode"))?;
        // RSV1 marks a compressed message, on its first frame only, once negotiated.
        let compressed = b0 & 0x40 != 0;
        let first_data = matches!(opcode, Opcode::Text | Opcode::Binary);
        if b0 & 0x30 != 0 || (compressed && !(self.deflate && first_data)) {
            return Err(WsError::Protocol("reserved bits set"));
        }
        let fin = b0 & 0x80 != 0;
        if b1 & 0x80 == 0 {
            return Err(WsError::Protocol("unmasked client frame"));
        }
        let (len, mut header_len) = match b1 & 0x7F {
            126 => {
                let Some(b) = buf.get(2..4) else {
                    return Ok(None);
                };
                (u64::from(u16::from_be_bytes([b[0], b[1]])), 4)
            }
            127 => {
                let Some(b) = buf.get(2..10) else {
                    return Ok(None);
                };
                let len = u64::from_be_bytes(b.try_into().expect("8 bytes"));
                if len >> 63 != 0 {
                    return Err(WsError::Protocol("payload length with the high bit set"));
                }
                (len, 10)
            }
            n => (u64::from(n), 2),
        };
        if opcode.is_control() {
            if !fin {
                return Err(WsError::Protocol("fragmented control frame"));
            }
            if len > MAX_CONTROL_PAYLOAD_BYTES as u64 {
                return Err(WsError::Protocol("control frame over 125 bytes"));
            }
        } else {
            match (&self.partial, opcode) {
                (None, Opcode::Continuation) => {
                    return Err(WsError::Protocol("continuation without a message"))
                }
                (Some(_), Opcode::Text | Opcode::Binary) => {
                    return Err(WsError::Protocol("new message inside a fragmented one"))
                }
                _ => {}
            }
            let so_far = self.partial.as_ref().map_or(0, |(_, p, _)| p.len() as u64);
            if so_far.saturating_add(len) > self.max_message_bytes as u64 {
                return Err(WsError::TooBig);
            }
        }
        let Some(mask) = buf.get(header_len..header_len + 4) else {
            return Ok(None);
        };
        let mask: [u8; 4] = mask.try_into().expect("4 bytes");
        header_len += 4;
        // Bounded above by the message limit (data) or 125 (control).
        let payload_len = len as usize;
        if buf.len() - header_len < payload_len {
            return Ok(None);
        }
        Ok(Some(Frame {
            fin,
            opcode,
            compressed,
            mask,
            header_len,
            payload_len,
        }))
    }

    /// Folds one unmasked frame in; a message when it completes one.
    fn take(&mut self, frame: &Frame, payload: Vec<u8>) -> Result<Option<Message>, WsError> {
        let (kind, data, compressed) = match frame.opcode {
            Opcode::Ping => return Ok(Some(Message::Ping(payload))),
            Opcode::Pong => return Ok(Some(Message::Pong(payload))),
            Opcode::Close => return close_payload(&payload).map(|c| Some(Message::Close(c))),
            Opcode::Continuation => {
                let (kind, mut data, compressed) = self.partial.take().expect("checked in frame()");
                data.extend_from_slice(&payload);
                (kind, data, compressed)
            }
            Opcode::Text | Opcode::Binary => (frame.opcode, payload, frame.compressed),
        };
        if !frame.fin {
            self.partial = Some((kind, data, compressed));
            return Ok(None);
        }
        let data = if compressed {
            super::ws_deflate::inflate(&data, self.max_message_bytes).map_err(|e| match e {
                super::ws_deflate::InflateError::TooBig => WsError::TooBig,
                super::ws_deflate::InflateError::Corrupt => {
                    WsError::Protocol("invalid compressed data")
                }
            })?
        } else {
            data
        };
        Ok(Some(match kind {
            Opcode::Text => {
                Message::Text(String::from_utf8(data).map_err(|_| WsError::InvalidUtf8)?)
            }
            _ => Message::Binary(data),
        }))
    }
}

struct Frame {
    fin: bool,
    opcode: Opcode,
    compressed: bool,
    mask: [u8; 4],
    header_len: usize,
    payload_len: usize,
}

fn unmask(payload: &mut [u8], mask: [u8; 4]) {
    for (i, b) in payload.iter_mut().enumerate() {
        *b ^= mask[i % 4];
    }
}

/// A close frame's code and reason (RFC 6455 5.5.1, 7.4).
fn close_payload(payload: &[u8]) -> Result<Option<(u16, String)>, WsError> {
    match payload.len() {
        0 => Ok(None),
        1 => Err(WsError::Protocol("close frame with a one-byte payload")),
        _ => {
            let code = u16::from_be_bytes([payload[0], payload[1]]);
            let valid = matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999);
            if !valid {
                return Err(WsError::Protocol("invalid close code"));
            }
            let reason =
                String::from_utf8(payload[2..].to_vec()).map_err(|_| WsError::InvalidUtf8)?;
            Ok(Some((code, reason)))
        }
    }
}

/// Appends one unmasked, final server frame.
pub fn encode_frame(out: &mut Vec<u8>, opcode: Opcode, payload: &[u8]) {
    encode(out, 0x80 | opcode.bits(), payload);
}

/// Appends a data message compressed with permessage-deflate (RSV1 set).
pub fn encode_compressed(out: &mut Vec<u8>, opcode: Opcode, payload: &[u8]) {
    encode(
        out,
        0x80 | 0x40 | opcode.bits(),
        &super::ws_deflate::deflate(payload),
    );
}

fn encode(out: &mut Vec<u8>, first: u8, payload: &[u8]) {
    out.push(first);
    match payload.len() {
        n if n < 126 => out.push(n as u8),
        n if n <= usize::from(u16::MAX) => {
            out.push(126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    out.extend_from_slice(payload);
}

/// Appends a close frame with `code` and as much of `reason` as fits (whole
/// characters, 123 bytes at most).
pub fn encode_close(out: &mut Vec<u8>, code: u16, reason: &str) {
    let mut end = reason.len().min(MAX_CONTROL_PAYLOAD_BYTES - 2);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    let mut payload = code.to_be_bytes().to_vec();
    payload.extend_from_slice(&reason.as_bytes()[..end]);
    encode_frame(out, Opcode::Close, &payload);
}

#[cfg(test)]
mod tests {
    use super::*;

    const MASK: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

    /// A masked client frame.
    fn client_frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
        let mut out = vec![if fin { 0x80 } else { 0 } | opcode];
        match payload.len() {
            n if n < 126 => out.push(0x80 | n as u8),
            n if n <= 0xFFFF => {
                out.push(0x80 | 126);
                out.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                out.push(0x80 | 127);
                out.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        out.extend_from_slice(&MASK);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ MASK[i % 4]));
        out
    }

    fn decode_all(d: &mut Decoder, bytes: &[u8]) -> Result<Vec<Message>, WsError> {
        let mut out = Vec::new();
        let mut at = 0;
        loop {
            let (m, n) = d.decode(&bytes[at..])?;
            at += n;
            match m {
                Some(m) => out.push(m),
                None => return Ok(out),
            }
        }
    }

    #[test]
    fn handshake_accept_key_is_the_rfc_example() {
        // RFC 6455 1.3.
        assert_eq!(
            accept_key(b"dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    #[test]
    fn rfc_example_masked_hello() {
        // RFC 6455 5.7: a single-frame masked text message containing "Hello".
        let bytes = [
            0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58,
        ];
        let mut d = Decoder::new(1 << 20);
        assert_eq!(
            d.decode(&bytes).unwrap(),
            (Some(Message::Text("Hello".into())), bytes.len())
        );
    }

    #[test]
    fn fragments_are_reassembled_around_an_interleaved_ping() {
        let mut bytes = client_frame(false, 0x1, b"Hel");
        bytes.extend(client_frame(true, 0x9, b"are you there"));
        bytes.extend(client_frame(false, 0x0, b"lo, "));
        bytes.extend(client_frame(true, 0x0, "wörld".as_bytes()));
        let mut d = Decoder::new(1 << 20);
        assert_eq!(
            decode_all(&mut d, &bytes).unwrap(),
            vec![
                Message::Ping(b"are you there".to_vec()),
                Message::Text("Hello, wörld".into())
            ]
        );
    }

    #[test]
    fn every_split_point_gives_the_same_messages() {
        let mut bytes = client_frame(true, 0x2, &[7u8; 300]);
        bytes.extend(client_frame(true, 0x2, &vec![9u8; 70_000]));
        bytes.extend(client_frame(true, 0x8, &[0x03, 0xe8, b'b', b'y', b'e']));
        let whole = decode_all(&mut Decoder::new(1 << 20), &bytes).unwrap();
        assert_eq!(whole.len(), 3);
        assert_eq!(whole[2], Message::Close(Some((1000, "bye".into()))));
        for cut in (0..bytes.len()).step_by(97) {
            let mut d = Decoder::new(1 << 20);
            let mut got = Vec::new();
            let mut buf = bytes[..cut].to_vec();
            for tail in [&bytes[cut..], &[][..]] {
                let mut at = 0;
                loop {
                    let (m, n) = d.decode(&buf[at..]).unwrap();
                    at += n;
                    match m {
                        Some(m) => got.push(m),
                        None => break,
                    }
                }
                buf.drain(..at);
                buf.extend_from_slice(tail);
            }
            assert_eq!(got, whole, "cut at {cut}");
        }
    }

    #[test]
    fn bad_frames_close_with_the_rfc_codes() {
        let cases: Vec<(Vec<u8>, u16)> = vec![
            (vec![0x81 | 0x40, 0x80, 0, 0, 0, 0], 1002), // RSV1 without an extension
            (vec![0x83, 0x80, 0, 0, 0, 0], 1002),        // reserved opcode
            (vec![0x81, 0x05, b'h', b'e', b'l', b'l', b'o'], 1002), // unmasked
            (client_frame(true, 0x9, &[0u8; 126]), 1002), // control frame over 125
            (client_frame(false, 0x9, b"x"), 1002),      // fragmented control frame
            (client_frame(true, 0x0, b"x"), 1002),       // continuation out of nowhere
            (client_frame(true, 0x8, &[0x03]), 1002),    // one-byte close payload
            (client_frame(true, 0x8, &[0x03, 0xed]), 1002), // close code 1005
            (client_frame(true, 0x1, &[0xff, 0xfe]), 1007), // invalid UTF-8
            (client_frame(true, 0x8, &[0x03, 0xe8, 0xff]), 1007), // invalid reason
            (client_frame(true, 0x2, &[0u8; 1025]), 1009), // over the limit
        ];
        for (bytes, code) in cases {
            let mut d = Decoder::new(1024);
            let err = decode_all(&mut d, &bytes).unwrap_err();
            assert_eq!(err.close_code(), code, "{bytes:02x?}: {err}");
        }
        // A new message inside a fragmented one.
        let mut bytes = client_frame(false, 0x1, b"a");
        bytes.extend(client_frame(true, 0x1, b"b"));
        let err = decode_all(&mut Decoder::new(1024), &bytes).unwrap_err();
        assert_eq!(
            err,
            WsError::Protocol("new message inside a fragmented one")
        );
        // The limit counts the whole message, and is known from the header alone.
        let mut bytes = client_frame(false, 0x2, &[0u8; 600]);
        bytes.extend(&client_frame(false, 0x0, &[0u8; 600])[..10]);
        assert_eq!(
            decode_all(&mut Decoder::new(1024), &bytes).unwrap_err(),
            WsError::TooBig
        );
    }

    #[test]
    fn compressed_messages_once_negotiated() {
        let packed = crate::http::ws_deflate::deflate("héllo héllo héllo".as_bytes());
        let (a, b) = packed.split_at(packed.len() / 2);
        let mut bytes = client_frame(false, 0x1 | 0x40, a);
        bytes.extend(client_frame(true, 0x9, b"p"));
        bytes.extend(client_frame(true, 0x0, b));
        let mut off = Decoder::new(1 << 20);
        assert_eq!(
            decode_all(&mut off, &bytes).unwrap_err().close_code(),
            1002,
            "RSV1 without the extension"
        );
        let mut on = Decoder::new(1 << 20);
        on.set_deflate(true);
        assert_eq!(
            decode_all(&mut on, &bytes).unwrap(),
            vec![
                Message::Ping(b"p".to_vec()),
                Message::Text("héllo héllo héllo".into())
            ]
        );
        // RSV1 on a continuation, a bomb past the limit, garbage.
        let mut cont = client_frame(false, 0x2, b"a");
        cont.extend(client_frame(true, 0x40, b"b"));
        let bomb = client_frame(
            true,
            0x2 | 0x40,
            &crate::http::ws_deflate::deflate(&[0; 5000]),
        );
        let garbage = client_frame(true, 0x2 | 0x40, &[0xff, 0xff, 0xff]);
        for (bytes, code) in [(cont, 1002), (bomb, 1009), (garbage, 1002)] {
            let mut d = Decoder::new(1000);
            d.set_deflate(true);
            assert_eq!(decode_all(&mut d, &bytes).unwrap_err().close_code(), code);
        }
        let mut out = Vec::new();
        encode_compressed(&mut out, Opcode::Text, b"Hello");
        assert_eq!(out, [0xc1, 0x07, 0xf2, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00]);
    }

    #[test]
    fn server_frames() {
        let mut out = Vec::new();
        encode_frame(&mut out, Opcode::Text, b"Hello");
        assert_eq!(out, [0x81, 0x05, b'H', b'e', b'l', b'l', b'o']);
        out.clear();
        encode_frame(&mut out, Opcode::Binary, &[1u8; 256]);
        assert_eq!(&out[..4], &[0x82, 126, 0x01, 0x00]);
        assert_eq!(out.len(), 4 + 256);
        out.clear();
        encode_frame(&mut out, Opcode::Binary, &vec![1u8; 70_000]);
        assert_eq!(&out[..10], &[0x82, 127, 0, 0, 0, 0, 0, 1, 0x11, 0x70]);
        out.clear();
        encode_close(&mut out, 1001, &"é".repeat(100));
        assert_eq!(&out[..4], &[0x88, 124, 0x03, 0xe9]);
        assert!(
            std::str::from_utf8(&out[4..]).is_ok(),
            "cut on a character boundary"
        );
    }
}
