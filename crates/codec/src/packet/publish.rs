//! PUBLISH and its acknowledgements PUBACK, PUBREC, PUBREL, PUBCOMP (MQTT 5.0 sections 3.3 to 3.7).

use bytes::{BufMut, Bytes, BytesMut};
use bytestring::ByteString;

use super::{check_packet_id, read_packet_id, read_reason};
use crate::error::{DecodeError, EncodeError};
use crate::properties::{Properties, PropertyContext};
use crate::reason::ReasonCode;
use crate::topic::{self, TopicError};
use crate::types::{PacketType, ProtocolVersion, QoS};
use crate::wire::{Reader, field_len, put_field};

/// PUBLISH: an application message. The payload is a slice of the received buffer, shared, never copied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Publish {
    pub dup: bool,
    pub qos: QoS,
    pub retain: bool,
    /// May be empty in 5.0 when a Topic Alias stands for it.
    pub topic: ByteString,
    /// Meaningful only for QoS 1 and 2, and then never 0; 0 for QoS 0.
    pub packet_id: u16,
    pub properties: Properties,
    pub payload: Bytes,
}

/// What comes before a PUBLISH's properties: its flags, topic and packet identifier.
struct Head {
    dup: bool,
    qos: QoS,
    retain: bool,
    topic: ByteString,
    packet_id: u16,
}

impl Head {
    fn decode(r: &mut Reader, flags: u8) -> Result<Head, DecodeError> {
        let dup = flags & 0x08 != 0;
        let qos = QoS::from_u8((flags >> 1) & 0x03).ok_or(DecodeError::InvalidQoS)?;
        let retain = flags & 0x01 != 0;
        if dup && qos == QoS::AtMostOnce {
            return Err(DecodeError::DupOnQoS0);
        }
        let topic = r.string()?;
        let packet_id = if qos == QoS::AtMostOnce { 0 } else { read_packet_id(r, PacketType::Publish)? };
        Ok(Head { dup, qos, retain, topic, packet_id })
    }
}

impl Publish {
    pub(crate) fn decode(mut r: Reader, flags: u8, version: ProtocolVersion) -> Result<Publish, DecodeError> {
        let Head { dup, qos, retain, topic, packet_id } = Head::decode(&mut r, flags)?;
        let properties =
            if version.is_v5() { Properties::decode(&mut r, PropertyContext::Publish)? } else { Properties::default() };
        match topic::validate_topic_name(&topic) {
            Ok(()) => {}
            Err(TopicError::Empty) if version.is_v5() => {
                if properties.topic_alias.is_none() {
                    return Err(DecodeError::EmptyTopicWithoutAlias);
                }
            }
            Err(e) => return Err(DecodeError::InvalidTopicName(e)),
        }
        let payload = r.rest();
        Ok(Publish { dup, qos, retain, topic, packet_id, properties, payload })
    }

    /// [`Publish::decode`] for a PUBLISH without properties (3.x, or 5.0 with a property length of 0), without
    /// building a `Properties`; `Ok(None)` when it has properties. The same checks, the same errors.
    pub(crate) fn decode_parts(
        mut r: Reader,
        flags: u8,
        version: ProtocolVersion,
    ) -> Result<Option<PublishParts>, DecodeError> {
        let Head { dup, qos, retain, topic, packet_id } = Head::decode(&mut r, flags)?;
        if version.is_v5() && r.varint()? != 0 {
            return Ok(None);
        }
        match topic::validate_topic_name(&topic) {
            Ok(()) => {}
            Err(TopicError::Empty) if version.is_v5() => return Err(DecodeError::EmptyTopicWithoutAlias),
            Err(e) => return Err(DecodeError::InvalidTopicName(e)),
        }
        let payload = r.rest();
        Ok(Some(PublishParts { dup, qos, retain, topic, packet_id, payload }))
    }

    pub(crate) fn header_flags(&self) -> u8 {
        (u8::from(self.dup) << 3) | ((self.qos as u8) << 1) | u8::from(self.retain)
    }

    pub(crate) fn body_len(&self, version: ProtocolVersion) -> Result<usize, EncodeError> {
        let mut len = field_len(self.topic.as_bytes())? + self.payload.len();
        if self.qos != QoS::AtMostOnce {
            check_packet_id(self.packet_id, PacketType::Publish)?;
            len += 2;
        }
        if version.is_v5() {
            len += self.properties.encoded_len()?;
        }
        Ok(len)
    }

    pub(crate) fn write_body(&self, version: ProtocolVersion, buf: &mut BytesMut) {
        put_field(buf, self.topic.as_bytes());
        if self.qos != QoS::AtMostOnce {
            buf.put_u16(self.packet_id);
        }
        if version.is_v5() {
            self.properties.write(buf);
        }
        buf.put_slice(&self.payload);
    }
}

/// A PUBLISH without properties, decoded: its fields as slices of the buffer it came in, and no `Properties`
/// (see [`crate::decode_publish_parts`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublishParts {
    pub dup: bool,
    pub qos: QoS,
    pub retain: bool,
    pub topic: ByteString,
    pub packet_id: u16,
    pub payload: Bytes,
}

/// A PUBLISH without properties, from borrowed parts: it encodes to the same bytes as a [`Publish`] with empty
/// properties, without building one (a `Publish` carries a full `Properties`, hundreds of bytes to set up and
/// move for every message delivered).
#[derive(Debug, Clone, Copy)]
pub struct BarePublish<'a> {
    pub dup: bool,
    pub qos: QoS,
    pub retain: bool,
    pub topic: &'a str,
    pub packet_id: u16,
    pub payload: &'a [u8],
}

impl BarePublish<'_> {
    fn body_len(&self, version: ProtocolVersion) -> Result<usize, EncodeError> {
        let mut len = field_len(self.topic.as_bytes())? + self.payload.len() + usize::from(version.is_v5());
        if self.qos != QoS::AtMostOnce {
            check_packet_id(self.packet_id, PacketType::Publish)?;
            len += 2;
        }
        Ok(len)
    }

    /// The encoded size for `version`, header included.
    pub fn encoded_len(&self, version: ProtocolVersion) -> Result<usize, EncodeError> {
        let len = self.body_len(version)?;
        Ok(1 + crate::wire::varint_len(len) + len)
    }

    /// Appends the packet to `buf`; returns the bytes written.
    pub fn encode(&self, version: ProtocolVersion, buf: &mut BytesMut) -> Result<usize, EncodeError> {
        let total = self.encode_head(version, buf, true)?;
        buf.put_slice(self.payload);
        Ok(total)
    }

    /// Appends the packet but its payload to `buf`, for a writer that sends the payload from where it is; returns
    /// the packet's whole size.
    pub fn encode_without_payload(&self, version: ProtocolVersion, buf: &mut BytesMut) -> Result<usize, EncodeError> {
        self.encode_head(version, buf, false)
    }

    fn encode_head(
        &self,
        version: ProtocolVersion,
        buf: &mut BytesMut,
        room_for_payload: bool,
    ) -> Result<usize, EncodeError> {
        let len = self.body_len(version)?;
        if len > crate::wire::MAX_REMAINING_LENGTH {
            return Err(EncodeError::PacketTooLarge(len));
        }
        let total = 1 + crate::wire::varint_len(len) + len;
        buf.reserve(if room_for_payload { total } else { total - self.payload.len() });
        let flags = (u8::from(self.dup) << 3) | ((self.qos as u8) << 1) | u8::from(self.retain);
        buf.put_u8(((PacketType::Publish as u8) << 4) | flags);
        crate::wire::put_varint(buf, len);
        put_field(buf, self.topic.as_bytes());
        if self.qos != QoS::AtMostOnce {
            buf.put_u16(self.packet_id);
        }
        if version.is_v5() {
            // An empty property list: its length, 0.
            buf.put_u8(0);
        }
        Ok(total)
    }
}

/// PUBACK, PUBREC, PUBREL and PUBCOMP share one shape: a packet identifier, and in 5.0 a reason code and properties.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ack {
    pub packet_id: u16,
    /// Always `Success` before 5.0.
    pub reason_code: ReasonCode,
    pub properties: Properties,
}

impl Ack {
    pub fn new(packet_id: u16) -> Ack {
        Ack { packet_id, reason_code: ReasonCode::Success, properties: Properties::default() }
    }

    pub(crate) fn decode(mut r: Reader, packet: PacketType, version: ProtocolVersion) -> Result<Ack, DecodeError> {
        if !version.is_v5() && r.remaining() != 2 {
            return Err(DecodeError::InvalidRemainingLength { packet, expected: 2, actual: r.remaining() });
        }
        let packet_id = read_packet_id(&mut r, packet)?;
        // MQTT 5.0 section 3.4.2.1: reason code and properties may be left out when there is nothing to say.
        let reason_code = if r.is_empty() { ReasonCode::Success } else { read_reason(&mut r, packet)? };
        let properties =
            if r.is_empty() { Properties::default() } else { Properties::decode(&mut r, PropertyContext::PubAck)? };
        r.finish()?;
        Ok(Ack { packet_id, reason_code, properties })
    }

    pub(crate) fn body_len(&self, packet: PacketType, version: ProtocolVersion) -> Result<usize, EncodeError> {
        check_packet_id(self.packet_id, packet)?;
        Ok(match self.v5_tail(version) {
            Tail::None => 2,
            Tail::Reason => 3,
            Tail::All => 3 + self.properties.encoded_len()?,
        })
    }

    pub(crate) fn write_body(&self, version: ProtocolVersion, buf: &mut BytesMut) {
        buf.put_u16(self.packet_id);
        match self.v5_tail(version) {
            Tail::None => {}
            Tail::Reason => buf.put_u8(self.reason_code as u8),
            Tail::All => {
                buf.put_u8(self.reason_code as u8);
                self.properties.write(buf);
            }
        }
    }

    fn v5_tail(&self, version: ProtocolVersion) -> Tail {
        tail(version, self.reason_code, &self.properties)
    }
}

/// How much of "reason code, properties" a 5.0 packet writes: the shortest form that says everything.
pub(crate) enum Tail {
    None,
    Reason,
    All,
}

pub(crate) fn tail(version: ProtocolVersion, reason: ReasonCode, props: &Properties) -> Tail {
    if !version.is_v5() {
        Tail::None
    } else if !props.is_empty() {
        Tail::All
    } else if reason != ReasonCode::Success {
        Tail::Reason
    } else {
        Tail::None
    }
}
