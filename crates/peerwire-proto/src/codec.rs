//! Length-prefixed frame codec.
//!
//! ```text
//! +--------------------+-------------------------------------+
//! | length: u32 BE (4) | Frame, protobuf encoded (length B)  |
//! +--------------------+-------------------------------------+
//! ```
//!
//! The length counts the protobuf bytes only, not the 4-byte prefix. It is checked against the
//! limit in force ([`FrameCodec::max_frame_size`]) as soon as the 4 prefix bytes are in, *before*
//! any buffer is reserved for the body, so a peer announcing 4 GiB costs nothing but an error.
//! A length of 0 would encode a `Frame` with no kind and is refused like any frame without a kind.
//!
//! The codec is plain code over a [`BytesMut`]: feed it bytes, take frames out. It knows no
//! runtime; `peerwire-transport` adapts it to tokio-util's `Decoder` and `Encoder`. The limit can be changed between frames (the handshake raises it from
//! [`HANDSHAKE_MAX_FRAME_SIZE`](crate::HANDSHAKE_MAX_FRAME_SIZE) to the negotiated size).

use bytes::{Buf, BufMut, Bytes, BytesMut};
use prost::Message;

use crate::v1::Frame;

/// Size of the length prefix.
pub const HEADER_LEN: usize = 4;

/// Why bytes could not become a frame, or a frame could not become bytes.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CodecError {
    /// The peer announced a frame larger than the limit in force.
    #[error("frame of {len} bytes exceeds the maximum frame size of {max} bytes")]
    FrameTooLarge {
        /// Announced length.
        len: u64,
        /// Limit in force.
        max: u32,
    },
    /// The local side tried to send a frame larger than the limit in force.
    #[error("outgoing frame of {len} bytes exceeds the maximum frame size of {max} bytes")]
    OutgoingTooLarge {
        /// Encoded length.
        len: usize,
        /// Limit in force.
        max: u32,
    },
    /// The body is not a valid protobuf `Frame`.
    #[error("malformed frame: {0}")]
    Malformed(#[from] prost::DecodeError),
    /// The body decoded but carries no message kind.
    #[error("frame carries no message")]
    Empty,
    /// The stream ended in the middle of a frame.
    #[error("stream ended inside a frame ({0} bytes pending)")]
    Truncated(usize),
    /// The underlying stream failed.
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
}

impl CodecError {
    /// True when the error is the peer's fault (as opposed to local misuse or I/O).
    pub fn is_peer_error(&self) -> bool {
        matches!(
            self,
            Self::FrameTooLarge { .. } | Self::Malformed(_) | Self::Empty | Self::Truncated(_)
        )
    }
}

#[derive(Debug, Clone, Copy)]
enum DecodeState {
    Head,
    Data(usize),
}

/// Encodes and decodes [`Frame`]s with a 4-byte big-endian length prefix.
#[derive(Debug)]
pub struct FrameCodec {
    max_frame_size: u32,
    state: DecodeState,
}

impl FrameCodec {
    /// A codec that refuses frames longer than `max_frame_size` bytes, in both directions.
    pub fn new(max_frame_size: u32) -> Self {
        Self {
            max_frame_size,
            state: DecodeState::Head,
        }
    }

    /// The limit in force.
    pub fn max_frame_size(&self) -> u32 {
        self.max_frame_size
    }

    /// Changes the limit. A frame whose header was already read keeps the length it announced
    /// only if it fits the new limit too; otherwise the next decode fails.
    pub fn set_max_frame_size(&mut self, max: u32) {
        self.max_frame_size = max;
    }

    fn check_len(&self, len: u64) -> Result<usize, CodecError> {
        if len > u64::from(self.max_frame_size) {
            return Err(CodecError::FrameTooLarge {
                len,
                max: self.max_frame_size,
            });
        }
        usize::try_from(len).map_err(|_| CodecError::FrameTooLarge {
            len,
            max: self.max_frame_size,
        })
    }

    fn decode_head(&mut self, src: &mut BytesMut) -> Result<Option<usize>, CodecError> {
        let Some(head) = src.get(..HEADER_LEN) else {
            return Ok(None);
        };
        let mut head = head;
        let len = self.check_len(u64::from(head.get_u32()))?;
        src.advance(HEADER_LEN);
        // Only now, with the length known to be within the limit, make room for the body.
        src.reserve(len.saturating_sub(src.len()));
        Ok(Some(len))
    }
}

impl FrameCodec {
    /// Takes the next whole frame out of `src`: `None` until all its bytes are in. An announced
    /// length over the limit fails as soon as the 4-byte prefix is in.
    pub fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Frame>, CodecError> {
        let len = match self.state {
            DecodeState::Head => match self.decode_head(src)? {
                Some(len) => {
                    self.state = DecodeState::Data(len);
                    len
                }
                None => return Ok(None),
            },
            DecodeState::Data(len) => {
                self.check_len(len as u64)?;
                len
            }
        };
        if src.len() < len {
            return Ok(None);
        }
        let body = src.split_to(len).freeze();
        self.state = DecodeState::Head;
        src.reserve(HEADER_LEN);
        let frame = Frame::decode_body(body)?;
        if frame.kind.is_none() {
            return Err(CodecError::Empty);
        }
        Ok(Some(frame))
    }

    /// Like [`FrameCodec::decode`] at the end of the stream: bytes left that make no whole
    /// frame are [`CodecError::Truncated`].
    pub fn decode_eof(&mut self, src: &mut BytesMut) -> Result<Option<Frame>, CodecError> {
        match self.decode(src)? {
            Some(frame) => Ok(Some(frame)),
            None if src.is_empty() && matches!(self.state, DecodeState::Head) => Ok(None),
            None => Err(CodecError::Truncated(src.len())),
        }
    }
}

impl FrameCodec {
    /// Appends `frame`, length prefix first, to `dst`; a frame over the limit is
    /// [`CodecError::OutgoingTooLarge`] and nothing is appended.
    pub fn encode(&mut self, frame: &Frame, dst: &mut BytesMut) -> Result<(), CodecError> {
        let len = frame.encoded_len();
        let too_large = CodecError::OutgoingTooLarge {
            len,
            max: self.max_frame_size,
        };
        let Ok(len32) = u32::try_from(len) else {
            return Err(too_large);
        };
        if len32 > self.max_frame_size {
            return Err(too_large);
        }
        dst.reserve(HEADER_LEN + len);
        dst.put_u32(len32);
        frame.encode_raw(dst);
        Ok(())
    }
}

/// True if `buf` (bytes read, not yet decoded, starting at a frame boundary) holds at least one
/// whole frame: the next decode returns a frame (or an error) without reading more. Lets a
/// reader that handles a batch of frames know when the batch ends.
pub fn frame_ready(buf: &[u8]) -> bool {
    match buf.get(..HEADER_LEN) {
        Some(&[a, b, c, d]) => {
            let len = u32::from_be_bytes([a, b, c, d]) as usize;
            buf.len() >= HEADER_LEN.saturating_add(len)
        }
        _ => false,
    }
}

/// Payloads at least this large are not copied by [`FrameCodec::encode_split`].
pub const SPLIT_PAYLOAD: usize = 16 * 1024;

impl FrameCodec {
    /// Encodes `frame` like [`FrameCodec::encode`] would (the same frame, the same length), except
    /// that a large payload (of a `Request`, `Response` or `Event`, at least [`SPLIT_PAYLOAD`]
    /// bytes) is not copied: everything before it goes into `dst`, and the payload, which must
    /// be written right after `dst`'s bytes, is returned (a cheap reference-counted clone).
    /// The payload field is put last in its message (protobuf allows fields in any order), so
    /// the bytes differ from [`FrameCodec::encode`]'s where a field follows the payload's number.
    pub fn encode_split(
        &mut self,
        frame: &Frame,
        dst: &mut BytesMut,
    ) -> Result<Option<Bytes>, CodecError> {
        use crate::v1::frame::Kind;
        // Frame field numbers 4, 5, 7; payload field numbers 3, 4, 3 (envelope.proto).
        match &frame.kind {
            Some(Kind::Request(m)) if m.payload.len() >= SPLIT_PAYLOAD => {
                let rest = crate::v1::Request {
                    payload: Bytes::new(),
                    method: m.method.clone(),
                    ..*m
                };
                self.put_split(4, &rest, 3, &m.payload, dst)
            }
            Some(Kind::Response(m)) if m.payload.len() >= SPLIT_PAYLOAD => {
                let rest = crate::v1::Response {
                    payload: Bytes::new(),
                    message: m.message.clone(),
                    ..*m
                };
                self.put_split(5, &rest, 4, &m.payload, dst)
            }
            Some(Kind::Event(m)) if m.payload.len() >= SPLIT_PAYLOAD => {
                let rest = crate::v1::Event {
                    payload: Bytes::new(),
                    topic: m.topic.clone(),
                    ..*m
                };
                self.put_split(7, &rest, 3, &m.payload, dst)
            }
            _ => {
                self.encode(frame, dst)?;
                Ok(None)
            }
        }
    }

    /// The frame `{ field: rest + { payload_field: payload } }`, all but the payload into `dst`.
    fn put_split<M: Message>(
        &self,
        field: u32,
        rest: &M,
        payload_field: u32,
        payload: &Bytes,
        dst: &mut BytesMut,
    ) -> Result<Option<Bytes>, CodecError> {
        use prost::encoding::{WireType, encode_key, encode_varint, encoded_len_varint, key_len};
        let n = payload.len();
        let inner = rest.encoded_len() + key_len(payload_field) + encoded_len_varint(n as u64) + n;
        let len = key_len(field) + encoded_len_varint(inner as u64) + inner;
        let too_large = || CodecError::OutgoingTooLarge {
            len,
            max: self.max_frame_size,
        };
        let len32 = u32::try_from(len).map_err(|_| too_large())?;
        if len32 > self.max_frame_size {
            return Err(too_large());
        }
        dst.reserve(HEADER_LEN + len - n);
        dst.put_u32(len32);
        encode_key(field, WireType::LengthDelimited, dst);
        encode_varint(inner as u64, dst);
        rest.encode_raw(dst);
        encode_key(payload_field, WireType::LengthDelimited, dst);
        encode_varint(n as u64, dst);
        Ok(Some(payload.clone()))
    }
}

/// Fuzzing entry point: feeds arbitrary bytes through the decoder with the given limit and
/// returns how many frames came out before an error or the end. Never panics.
pub fn fuzz_decode(data: &[u8], max_frame_size: u32) -> usize {
    let mut codec = FrameCodec::new(max_frame_size);
    let mut buf = BytesMut::from(data);
    let mut n = 0;
    while let Ok(Some(_)) = codec.decode_eof(&mut buf) {
        n += 1;
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::v1::{self, frame::Kind};
    use proptest::prelude::*;

    fn ping(n: u64) -> Frame {
        Frame::new(Kind::Ping(v1::Ping { nonce: n }))
    }

    /// A large payload is not copied, yet the bytes on the wire decode to the same frame, have
    /// the same length as the plain encoding, and a small payload is encoded as usual.
    #[test]
    fn split_encoding_is_the_same_frame_without_copying_the_payload() {
        let payload = Bytes::from((0..100_000u32).map(|i| i as u8).collect::<Vec<u8>>());
        let frames = [
            Frame::new(Kind::Request(v1::Request {
                id: 7,
                method: "display.Frame".into(),
                payload: payload.clone(),
                deadline_ms: 250,
            })),
            Frame::new(Kind::Response(v1::Response {
                id: 7,
                code: 0,
                message: String::new(),
                payload: payload.clone(),
            })),
            Frame::new(Kind::Event(v1::Event {
                topic: "display.Tick".into(),
                seq: 3,
                payload: payload.clone(),
            })),
        ];
        let mut codec = FrameCodec::new(1 << 20);
        for frame in &frames {
            let mut plain = BytesMut::new();
            codec.encode(frame, &mut plain).unwrap();
            let mut head = BytesMut::new();
            let body = codec.encode_split(frame, &mut head).unwrap().unwrap();
            // The same allocation, not a copy.
            assert_eq!(body.as_ptr(), payload.as_ptr());
            assert_eq!(head.len() + body.len(), plain.len());
            head.extend_from_slice(&body);
            let decoded = codec.decode(&mut head).unwrap().unwrap();
            assert_eq!(&decoded, frame);
            assert!(head.is_empty());
        }
        // Within the limit only.
        let mut small = FrameCodec::new(50_000);
        assert!(matches!(
            small.encode_split(&frames[0], &mut BytesMut::new()),
            Err(CodecError::OutgoingTooLarge { .. })
        ));
        // A small payload: the ordinary encoding.
        let mut a = BytesMut::new();
        let mut b = BytesMut::new();
        codec.encode(&request(1, vec![1; 100]), &mut a).unwrap();
        assert!(
            codec
                .encode_split(&request(1, vec![1; 100]), &mut b)
                .unwrap()
                .is_none()
        );
        assert_eq!(a, b);
    }

    fn request(id: u64, payload: Vec<u8>) -> Frame {
        Frame::new(Kind::Request(v1::Request {
            id,
            method: "display.GetState".into(),
            payload: payload.into(),
            deadline_ms: 100,
        }))
    }

    fn encoded(frames: &[Frame]) -> BytesMut {
        let mut codec = FrameCodec::new(u32::MAX);
        let mut buf = BytesMut::new();
        for f in frames {
            codec.encode(f, &mut buf).unwrap();
        }
        buf
    }

    #[test]
    fn one_packet_many_frames() {
        let frames = [ping(1), request(2, vec![1; 300]), ping(3)];
        let mut buf = encoded(&frames);
        let mut codec = FrameCodec::new(1024);
        for f in &frames {
            assert_eq!(codec.decode(&mut buf).unwrap().as_ref(), Some(f));
        }
        assert!(codec.decode(&mut buf).unwrap().is_none());
        assert!(codec.decode_eof(&mut buf).unwrap().is_none());
    }

    #[test]
    fn every_split_point() {
        let frames = [request(9, vec![7; 40]), ping(2)];
        let all = encoded(&frames);
        for cut in 0..all.len() {
            let mut codec = FrameCodec::new(1024);
            let mut buf = BytesMut::from(&all[..cut]);
            let mut out = vec![];
            while let Some(f) = codec.decode(&mut buf).unwrap() {
                out.push(f);
            }
            buf.extend_from_slice(&all[cut..]);
            while let Some(f) = codec.decode(&mut buf).unwrap() {
                out.push(f);
            }
            assert_eq!(out, frames, "cut at {cut}");
        }
    }

    #[test]
    fn byte_at_a_time() {
        let frames = [request(1, vec![3; 1000]), ping(5)];
        let all = encoded(&frames);
        let mut codec = FrameCodec::new(4096);
        let mut buf = BytesMut::new();
        let mut out = vec![];
        for b in all.iter() {
            buf.put_u8(*b);
            if let Some(f) = codec.decode(&mut buf).unwrap() {
                out.push(f);
            }
        }
        assert_eq!(out, frames);
    }

    #[test]
    fn four_gib_prefix_is_refused_before_allocating() {
        let mut codec = FrameCodec::new(64 * 1024);
        let mut buf = BytesMut::from(&[0xff, 0xff, 0xff, 0xff][..]);
        let cap_before = buf.capacity();
        match codec.decode(&mut buf) {
            Err(CodecError::FrameTooLarge { len, max }) => {
                assert_eq!(len, u64::from(u32::MAX));
                assert_eq!(max, 64 * 1024);
            }
            other => panic!("expected FrameTooLarge, got {other:?}"),
        }
        assert!(buf.capacity() <= cap_before.max(64));
    }

    #[test]
    fn over_the_limit_by_one() {
        let mut buf = encoded(&[request(1, vec![0; 100])]);
        let len = buf.len() - HEADER_LEN;
        let mut codec = FrameCodec::new(len as u32 - 1);
        assert!(matches!(
            codec.decode(&mut buf.clone()),
            Err(CodecError::FrameTooLarge { .. })
        ));
        codec.set_max_frame_size(len as u32);
        assert!(codec.decode(&mut buf).unwrap().is_some());
    }

    #[test]
    fn limit_lowered_mid_frame() {
        let all = encoded(&[request(1, vec![0; 100])]);
        let mut codec = FrameCodec::new(1024);
        let mut buf = BytesMut::from(&all[..10]);
        assert!(codec.decode(&mut buf).unwrap().is_none());
        codec.set_max_frame_size(16);
        buf.extend_from_slice(&all[10..]);
        assert!(matches!(
            codec.decode(&mut buf),
            Err(CodecError::FrameTooLarge { .. })
        ));
    }

    #[test]
    fn outgoing_limit() {
        let mut codec = FrameCodec::new(50);
        let mut buf = BytesMut::new();
        assert!(matches!(
            codec.encode(&request(1, vec![0; 100]), &mut buf),
            Err(CodecError::OutgoingTooLarge { .. })
        ));
        assert!(buf.is_empty());
    }

    #[test]
    fn truncated_then_eof() {
        let all = encoded(&[request(1, vec![0; 100])]);
        let mut codec = FrameCodec::new(1024);
        let mut buf = BytesMut::from(&all[..50]);
        assert!(matches!(
            codec.decode_eof(&mut buf),
            Err(CodecError::Truncated(_))
        ));
        let mut codec = FrameCodec::new(1024);
        let mut buf = BytesMut::from(&all[..2]);
        assert!(matches!(
            codec.decode_eof(&mut buf),
            Err(CodecError::Truncated(2))
        ));
    }

    #[test]
    fn empty_and_garbage_bodies() {
        let mut codec = FrameCodec::new(1024);
        let mut buf = BytesMut::from(&[0, 0, 0, 0][..]);
        assert!(matches!(codec.decode(&mut buf), Err(CodecError::Empty)));
        let mut codec = FrameCodec::new(1024);
        let mut buf = BytesMut::from(&[0, 0, 0, 3, 0xff, 0xff, 0xff][..]);
        let err = codec.decode(&mut buf).unwrap_err();
        assert!(matches!(err, CodecError::Malformed(_)));
        assert!(err.is_peer_error());
    }

    fn arb_frame() -> impl Strategy<Value = Frame> {
        let bytes = proptest::collection::vec(any::<u8>(), 0..256);
        prop_oneof![
            (
                any::<u64>(),
                "[a-z]{1,8}\\.[A-Za-z]{1,16}",
                bytes.clone(),
                any::<u32>()
            )
                .prop_map(|(id, method, payload, deadline_ms)| Frame::new(
                    Kind::Request(v1::Request {
                        id,
                        method,
                        payload: payload.into(),
                        deadline_ms
                    })
                )),
            (any::<u64>(), any::<i32>(), ".{0,40}", bytes.clone()).prop_map(
                |(id, code, message, payload)| Frame::new(Kind::Response(v1::Response {
                    id,
                    code,
                    message,
                    payload: payload.into()
                }))
            ),
            (".{0,20}", any::<u64>(), bytes).prop_map(|(topic, seq, payload)| Frame::new(
                Kind::Event(v1::Event {
                    topic,
                    seq,
                    payload: payload.into()
                })
            )),
            any::<u64>().prop_map(|n| Frame::new(Kind::Ping(v1::Ping { nonce: n }))),
            any::<u64>().prop_map(|n| Frame::new(Kind::Cancel(v1::Cancel { id: n }))),
            (proptest::collection::vec(any::<u32>(), 0..4), ".{0,30}").prop_map(
                |(protocol_versions, client_name)| Frame::new(Kind::Hello(v1::Hello {
                    protocol_versions,
                    client_name,
                    ..Default::default()
                }))
            ),
        ]
    }

    proptest! {
        #[test]
        fn round_trips_arbitrary_frames(
            frames in proptest::collection::vec(arb_frame(), 1..8),
            chunk in 1usize..64,
        ) {
            let all = encoded(&frames);
            let mut codec = FrameCodec::new(1 << 20);
            let mut buf = BytesMut::new();
            let mut out = vec![];
            for piece in all.chunks(chunk) {
                buf.extend_from_slice(piece);
                while let Some(f) = codec.decode(&mut buf).unwrap() {
                    out.push(f);
                }
            }
            prop_assert_eq!(out, frames);
        }

        #[test]
        fn never_panics_on_arbitrary_bytes(
            data in proptest::collection::vec(any::<u8>(), 0..2048),
            max in 0u32..4096,
        ) {
            let n = fuzz_decode(&data, max);
            prop_assert!(n <= data.len() / HEADER_LEN + 1);
        }
    }
}
