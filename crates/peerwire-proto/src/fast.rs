//! [`Frame::decode_body`](v1::Frame::decode_body): prost's decoding of a frame, with a direct
//! path for the frame a fan-out brings by the thousand, an `Event` as every peerwire end
//! encodes it.
//!
//! prost decodes an `Event` frame through its generic machinery (a field loop per message, a
//! `Buf` per field, the topic's `String` grown and filled through `Buf::put`): about 1,060
//! instructions per event in a fan-out's client, a third of all it does per event. The direct
//! path reads the canonical encoding (the frame's one field, `event` = 7; in the event
//! `topic` = 1, `seq` = 2 and `payload` = 3 in that order, each at most once, any of them
//! absent when it has its default value, nothing else) and leaves every other frame, and any
//! event encoded otherwise (fields out of order or repeated, unknown fields, anything
//! malformed), to prost: so its result is prost's, for every input.

use bytes::Bytes;
use prost::Message;

use crate::v1::{Event, Frame, frame::Kind};

/// `event` (field 7) of `Frame`, length-delimited.
const TAG_EVENT: u8 = 7 << 3 | 2;
/// `topic` (field 1) of `Event`, length-delimited.
const TAG_TOPIC: u8 = 1 << 3 | 2;
/// `seq` (field 2) of `Event`, a varint.
const TAG_SEQ: u8 = 2 << 3;
/// `payload` (field 3) of `Event`, length-delimited.
const TAG_PAYLOAD: u8 = 3 << 3 | 2;

impl Frame {
    /// Decodes a frame's body (the bytes after its length prefix), as `Frame::decode` does:
    /// the same frame, or the same error, for every input; an `Event` encoded canonically
    /// takes a direct path (see the module's notes), its payload sharing `body`.
    pub fn decode_body(body: Bytes) -> Result<Self, prost::DecodeError> {
        match event(&body) {
            Some(event) => Ok(Self::new(Kind::Event(event))),
            None => Self::decode(body),
        }
    }
}

/// The `Event` of a canonically encoded event frame; `None` for anything else.
fn event(body: &Bytes) -> Option<Event> {
    let (&tag, rest) = body.split_first()?;
    if tag != TAG_EVENT {
        return None;
    }
    let (len, n) = varint(rest)?;
    let mut at = 1 + n;
    // The event is the frame's last (only) field.
    if usize::try_from(len).ok()? != body.len() - at {
        return None;
    }
    let mut event = Event::default();
    if body.get(at) == Some(&TAG_TOPIC) {
        let (start, end) = delimited(body, at + 1)?;
        event.topic = String::from_utf8(body.get(start..end)?.to_vec()).ok()?;
        at = end;
    }
    if body.get(at) == Some(&TAG_SEQ) {
        let (seq, n) = varint(body.get(at + 1..)?)?;
        event.seq = seq;
        at += 1 + n;
    }
    if body.get(at) == Some(&TAG_PAYLOAD) {
        let (start, end) = delimited(body, at + 1)?;
        event.payload = body.slice(start..end);
        at = end;
    }
    (at == body.len()).then_some(event)
}

/// The bounds of the length-delimited value whose length starts at `at`.
fn delimited(body: &[u8], at: usize) -> Option<(usize, usize)> {
    let (len, n) = varint(body.get(at..)?)?;
    let start = at + n;
    let end = start.checked_add(usize::try_from(len).ok()?)?;
    (end <= body.len()).then_some((start, end))
}

/// A varint at the start of `b` and its length in bytes, where prost would read the same value;
/// `None` where it would fail (past 10 bytes, or a 10th byte above 1), or `b` ends first.
fn varint(b: &[u8]) -> Option<(u64, usize)> {
    let mut value = 0u64;
    for (i, &byte) in b.iter().enumerate().take(10) {
        if i == 9 && byte > 1 {
            return None;
        }
        value |= u64::from(byte & 0x7f) << (7 * i);
        if byte < 0x80 {
            return Some((value, i + 1));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::v1::{Ping, Request};
    use proptest::prelude::*;

    fn frame(kind: Kind) -> Vec<u8> {
        Frame::new(kind).encode_to_vec()
    }

    fn same_as_prost(bytes: &[u8]) {
        let body = Bytes::copy_from_slice(bytes);
        let fast = Frame::decode_body(body.clone());
        let prost = Frame::decode(body);
        match (fast, prost) {
            (Ok(a), Ok(b)) => assert_eq!(a, b, "{bytes:02x?}"),
            (Err(_), Err(_)) => {}
            (a, b) => panic!("{bytes:02x?}: direct {a:?}, prost {b:?}"),
        }
    }

    /// Events as peerwire encodes them take the direct path and decode as prost decodes them;
    /// other frames and other encodings go to prost.
    #[test]
    fn the_direct_path_decodes_what_prost_decodes() {
        let events = [
            Event {
                topic: "bench.tick".into(),
                seq: 1,
                payload: Bytes::from_static(&[7; 64]),
            },
            Event::default(),
            Event {
                topic: String::new(),
                seq: u64::MAX,
                payload: Bytes::new(),
            },
            Event {
                topic: "t.é".into(),
                seq: 0,
                payload: Bytes::from(vec![1u8; 70_000]),
            },
        ];
        for event in events {
            let bytes = frame(Kind::Event(event.clone()));
            assert_eq!(super::event(&Bytes::from(bytes.clone())), Some(event));
            same_as_prost(&bytes);
            // Every truncation: an error, as prost's, or a shorter valid frame.
            for cut in 0..bytes.len().min(100) {
                same_as_prost(&bytes[..cut]);
            }
        }
        // Not canonical: fields out of order, repeated, unknown; the frame's field twice;
        // invalid UTF-8; an 11-byte varint.
        let odd: [&[u8]; 7] = [
            &[0x3a, 0x06, 0x10, 0x01, 0x0a, 0x02, b'a', b'b'],
            &[0x3a, 0x04, 0x10, 0x01, 0x10, 0x02],
            &[0x3a, 0x04, 0x10, 0x01, 0x20, 0x05],
            &[0x3a, 0x02, 0x10, 0x01, 0x3a, 0x02, 0x10, 0x02],
            &[0x3a, 0x04, 0x0a, 0x02, 0xff, 0xfe],
            &[
                0x3a, 0x0c, 0x10, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x01,
            ],
            &[0x3a, 0x02, 0x10, 0x80],
        ];
        for bytes in odd {
            assert_eq!(super::event(&Bytes::copy_from_slice(bytes)), None);
            same_as_prost(bytes);
        }
        same_as_prost(&frame(Kind::Ping(Ping { nonce: 9 })));
        same_as_prost(&frame(Kind::Request(Request {
            id: 3,
            method: "a.B".into(),
            payload: Bytes::from_static(b"x"),
            deadline_ms: 5,
        })));
    }

    proptest! {
        /// Whatever the bytes (event frames with bytes changed, or any bytes): prost's result.
        #[test]
        fn any_bytes_decode_as_prost_decodes(
            topic in "[a-z.]{0,12}",
            seq in any::<u64>(),
            payload in proptest::collection::vec(any::<u8>(), 0..40),
            edits in proptest::collection::vec((any::<usize>(), any::<u8>()), 0..3),
            cut in any::<usize>(),
            noise in proptest::collection::vec(any::<u8>(), 0..24),
        ) {
            let mut bytes = frame(Kind::Event(Event { topic, seq, payload: payload.into() }));
            for (at, byte) in edits {
                let len = bytes.len();
                bytes[at % len] = byte;
            }
            let cut = cut % (bytes.len() + 1);
            same_as_prost(&bytes[..cut]);
            same_as_prost(&bytes);
            same_as_prost(&noise);
        }
    }
}
