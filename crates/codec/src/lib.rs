//! MQTT 3.1, 3.1.1 and 5.0 control packets: parse and encode, sans-I/O.
//!
//! This crate owns the wire format and the rules about topic names and filters. It does no I/O, knows nothing of
//! tokio or sockets, and never panics on input: every malformed-packet rule of the specifications is a
//! [`DecodeError`] variant that names the MQTT 5.0 reason code to close the connection with.
//!
//! ```
//! use bytes::BytesMut;
//! use skein_codec::{decode, Packet, ProtocolVersion, MAX_PACKET_SIZE};
//!
//! let mut buf = BytesMut::from(&[0xc0u8, 0x00][..]); // PINGREQ
//! assert_eq!(decode(&mut buf, ProtocolVersion::V311, MAX_PACKET_SIZE), Ok(Some(Packet::PingReq)));
//! assert!(buf.is_empty());
//! ```
#![forbid(unsafe_code)]

mod error;
#[doc(hidden)]
pub mod fuzzing;
mod packet;
mod properties;
mod reason;
pub mod topic;
mod types;
mod wire;

pub use bytes::{Bytes, BytesMut};
pub use bytestring::ByteString;
pub use error::{DecodeError, EncodeError};
pub use packet::{
    Ack, Auth, BarePublish, ConnAck, Connect, Disconnect, MAX_PACKET_SIZE, Packet, Publish, PublishParts,
    RetainHandling, SubAck, Subscribe, SubscriptionOptions, UnsubAck, Unsubscribe, Will, decode, decode_bytes,
    decode_publish_parts, packet_size,
};
pub use properties::{Properties, PropertyContext, PropertyValues};
pub use reason::{ALL_REASON_CODES, ReasonCode};
pub use topic::{FilterTrie, TopicError};
pub use types::{PacketType, ProtocolVersion, QoS};
pub use wire::{MAX_REMAINING_LENGTH, put_varint};

#[cfg(test)]
mod tests {
    /// A packet moves by value at each step from the decoder to its handler, and a PUBACK is as large as the largest
    /// variant: with the property values inline (400 bytes), moving packets was 7.5% of a broker's CPU.
    #[test]
    fn a_packet_is_a_few_words_whatever_its_properties() {
        assert_eq!(size_of::<crate::Properties>(), 8, "one pointer, null when there are none");
        assert!(size_of::<crate::Packet>() <= 80, "{}", size_of::<crate::Packet>());
    }
}
