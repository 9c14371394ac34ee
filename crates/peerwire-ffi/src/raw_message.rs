//! A protobuf "message" that is its bytes: the server's event handlers and pushes take typed
//! messages, and the C program brings its own encoding, so the payload goes through untouched
//! (decoding takes the whole buffer, encoding writes it back).

use bytes::{Buf, BufMut, Bytes};
use prost::encoding::{DecodeContext, WireType};

/// An encoded payload passed through as is.
#[derive(Debug, Default, Clone, PartialEq)]
pub(crate) struct RawMessage(pub(crate) Bytes);

impl prost::Message for RawMessage {
    fn encode_raw(&self, buf: &mut impl BufMut) {
        buf.put_slice(&self.0);
    }

    fn merge_field(
        &mut self,
        tag: u32,
        wire_type: WireType,
        buf: &mut impl Buf,
        ctx: DecodeContext,
    ) -> Result<(), prost::DecodeError> {
        // Not reached: `merge` below takes the whole buffer.
        prost::encoding::skip_field(wire_type, tag, buf, ctx)
    }

    fn encoded_len(&self) -> usize {
        self.0.len()
    }

    fn clear(&mut self) {
        self.0.clear();
    }

    fn merge(&mut self, mut buf: impl Buf) -> Result<(), prost::DecodeError> {
        self.0 = buf.copy_to_bytes(buf.remaining());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use prost::Message;

    #[test]
    fn bytes_go_through_untouched_both_ways() {
        let payload = Bytes::from_static(b"\x08\x96\x01 not protobuf at all \xff");
        let decoded = RawMessage::decode(payload.clone()).unwrap();
        assert_eq!(decoded.0, payload);
        assert_eq!(decoded.encode_to_vec(), payload.to_vec());
        assert_eq!(RawMessage::decode(Bytes::new()).unwrap().0.len(), 0);
    }
}
