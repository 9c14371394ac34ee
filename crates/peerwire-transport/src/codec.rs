//! [`Codec`]: `peerwire_proto`'s sans-IO [`FrameCodec`] as tokio-util's [`Decoder`] and
//! [`Encoder`], for `FramedRead` (the read side of every connection).

use bytes::BytesMut;
use peerwire_proto::codec::{CodecError, FrameCodec};
use peerwire_proto::v1::Frame;
use tokio_util::codec::{Decoder, Encoder};

/// [`FrameCodec`] as a tokio-util codec: the same frames, limits and errors.
#[derive(Debug)]
pub struct Codec(FrameCodec);

impl Codec {
    /// A codec that refuses frames longer than `max_frame_size` bytes, in both directions.
    pub fn new(max_frame_size: u32) -> Self {
        Self(FrameCodec::new(max_frame_size))
    }

    /// The limit in force.
    pub fn max_frame_size(&self) -> u32 {
        self.0.max_frame_size()
    }

    /// Changes the limit (see [`FrameCodec::set_max_frame_size`]).
    pub fn set_max_frame_size(&mut self, max: u32) {
        self.0.set_max_frame_size(max);
    }
}

impl From<FrameCodec> for Codec {
    fn from(codec: FrameCodec) -> Self {
        Self(codec)
    }
}

impl Decoder for Codec {
    type Item = Frame;
    type Error = CodecError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Frame>, CodecError> {
        self.0.decode(src)
    }

    fn decode_eof(&mut self, src: &mut BytesMut) -> Result<Option<Frame>, CodecError> {
        self.0.decode_eof(src)
    }
}

impl Encoder<&Frame> for Codec {
    type Error = CodecError;

    fn encode(&mut self, frame: &Frame, dst: &mut BytesMut) -> Result<(), CodecError> {
        self.0.encode(frame, dst)
    }
}

impl Encoder<Frame> for Codec {
    type Error = CodecError;

    fn encode(&mut self, frame: Frame, dst: &mut BytesMut) -> Result<(), CodecError> {
        self.0.encode(&frame, dst)
    }
}
