//! SUBSCRIBE, SUBACK, UNSUBSCRIBE, UNSUBACK (MQTT 5.0 sections 3.8 to 3.11).
//!
//! Topic filters are decoded as strings and not judged here: a filter the server will not take is answered with a
//! failure code in SUBACK for that filter alone (see `topic::parse_filter`), the connection stays up.

use bytes::{BufMut, BytesMut};
use bytestring::ByteString;

use super::{check_packet_id, read_packet_id, read_reason};
use crate::error::{DecodeError, EncodeError};
use crate::properties::{Properties, PropertyContext};
use crate::reason::ReasonCode;
use crate::types::{PacketType, ProtocolVersion, QoS};
use crate::wire::{Reader, field_len, put_field};

/// Retain Handling of a subscription (MQTT 5.0 section 3.8.3.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RetainHandling {
    /// Send retained messages at the time of the subscribe.
    #[default]
    SendAtSubscribe = 0,
    /// Send them only if the subscription did not exist yet.
    SendIfNew = 1,
    /// Do not send retained messages.
    DoNotSend = 2,
}

/// The options byte of one filter. Before 5.0 only `qos` exists; the rest keep their defaults.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SubscriptionOptions {
    pub qos: QoS,
    pub no_local: bool,
    pub retain_as_published: bool,
    pub retain_handling: RetainHandling,
}

impl SubscriptionOptions {
    fn decode(byte: u8, version: ProtocolVersion) -> Result<SubscriptionOptions, DecodeError> {
        let reserved = if version.is_v5() { 0xc0 } else { 0xfc };
        if byte & reserved != 0 {
            return Err(DecodeError::InvalidSubscriptionOptions(byte));
        }
        let qos = QoS::from_u8(byte & 0x03).ok_or(DecodeError::InvalidSubscriptionOptions(byte))?;
        let retain_handling = match (byte >> 4) & 0x03 {
            0 => RetainHandling::SendAtSubscribe,
            1 => RetainHandling::SendIfNew,
            2 => RetainHandling::DoNotSend,
            _ => return Err(DecodeError::InvalidRetainHandling),
        };
        Ok(SubscriptionOptions {
            qos,
            no_local: byte & 0x04 != 0,
            retain_as_published: byte & 0x08 != 0,
            retain_handling,
        })
    }

    fn encode(&self, version: ProtocolVersion) -> u8 {
        let mut byte = self.qos as u8;
        if version.is_v5() {
            byte |= u8::from(self.no_local) << 2;
            byte |= u8::from(self.retain_as_published) << 3;
            byte |= (self.retain_handling as u8) << 4;
        }
        byte
    }
}

/// SUBSCRIBE: one or more topic filters with their options.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscribe {
    pub packet_id: u16,
    pub properties: Properties,
    pub filters: Vec<(ByteString, SubscriptionOptions)>,
}

impl Subscribe {
    pub(crate) fn decode(mut r: Reader, version: ProtocolVersion) -> Result<Subscribe, DecodeError> {
        let packet_id = read_packet_id(&mut r, PacketType::Subscribe)?;
        let properties = read_properties(&mut r, version, PropertyContext::Subscribe)?;
        let mut filters = Vec::new();
        while !r.is_empty() {
            let filter = r.string()?;
            let options = SubscriptionOptions::decode(r.u8()?, version)?;
            filters.push((filter, options));
        }
        if filters.is_empty() {
            return Err(DecodeError::NoTopicFilters { packet: PacketType::Subscribe });
        }
        Ok(Subscribe { packet_id, properties, filters })
    }

    pub(crate) fn body_len(&self, version: ProtocolVersion) -> Result<usize, EncodeError> {
        check_packet_id(self.packet_id, PacketType::Subscribe)?;
        let mut len = 2 + properties_len(&self.properties, version)?;
        for (filter, _) in &self.filters {
            len += field_len(filter.as_bytes())? + 1;
        }
        Ok(len)
    }

    pub(crate) fn write_body(&self, version: ProtocolVersion, buf: &mut BytesMut) {
        buf.put_u16(self.packet_id);
        write_properties(&self.properties, version, buf);
        for (filter, options) in &self.filters {
            put_field(buf, filter.as_bytes());
            buf.put_u8(options.encode(version));
        }
    }
}

/// SUBACK: one reason code per filter of the SUBSCRIBE, in order [MQTT-3.9.3-1].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubAck {
    pub packet_id: u16,
    pub properties: Properties,
    /// Before 5.0 every failure is written as 0x80 and read back as `UnspecifiedError`.
    pub reason_codes: Vec<ReasonCode>,
}

impl SubAck {
    pub(crate) fn decode(mut r: Reader, version: ProtocolVersion) -> Result<SubAck, DecodeError> {
        let packet_id = read_packet_id(&mut r, PacketType::SubAck)?;
        let properties = read_properties(&mut r, version, PropertyContext::SubAck)?;
        let mut reason_codes = Vec::with_capacity(r.remaining());
        while !r.is_empty() {
            let code = if version.is_v5() {
                read_reason(&mut r, PacketType::SubAck)?
            } else {
                let byte = r.u8()?;
                ReasonCode::from_v3_suback_code(byte)
                    .ok_or(DecodeError::InvalidReasonCode { packet: PacketType::SubAck, code: byte })?
            };
            reason_codes.push(code);
        }
        if reason_codes.is_empty() {
            return Err(DecodeError::NoReasonCodes { packet: PacketType::SubAck });
        }
        Ok(SubAck { packet_id, properties, reason_codes })
    }

    pub(crate) fn body_len(&self, version: ProtocolVersion) -> Result<usize, EncodeError> {
        check_packet_id(self.packet_id, PacketType::SubAck)?;
        Ok(2 + properties_len(&self.properties, version)? + self.reason_codes.len())
    }

    pub(crate) fn write_body(&self, version: ProtocolVersion, buf: &mut BytesMut) {
        buf.put_u16(self.packet_id);
        write_properties(&self.properties, version, buf);
        for code in &self.reason_codes {
            buf.put_u8(if version.is_v5() { *code as u8 } else { code.to_v3_suback_code() });
        }
    }
}

/// UNSUBSCRIBE: one or more topic filters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unsubscribe {
    pub packet_id: u16,
    pub properties: Properties,
    pub filters: Vec<ByteString>,
}

impl Unsubscribe {
    pub(crate) fn decode(mut r: Reader, version: ProtocolVersion) -> Result<Unsubscribe, DecodeError> {
        let packet_id = read_packet_id(&mut r, PacketType::Unsubscribe)?;
        let properties = read_properties(&mut r, version, PropertyContext::Unsubscribe)?;
        let mut filters = Vec::new();
        while !r.is_empty() {
            filters.push(r.string()?);
        }
        if filters.is_empty() {
            return Err(DecodeError::NoTopicFilters { packet: PacketType::Unsubscribe });
        }
        Ok(Unsubscribe { packet_id, properties, filters })
    }

    pub(crate) fn body_len(&self, version: ProtocolVersion) -> Result<usize, EncodeError> {
        check_packet_id(self.packet_id, PacketType::Unsubscribe)?;
        let mut len = 2 + properties_len(&self.properties, version)?;
        for filter in &self.filters {
            len += field_len(filter.as_bytes())?;
        }
        Ok(len)
    }

    pub(crate) fn write_body(&self, version: ProtocolVersion, buf: &mut BytesMut) {
        buf.put_u16(self.packet_id);
        write_properties(&self.properties, version, buf);
        for filter in &self.filters {
            put_field(buf, filter.as_bytes());
        }
    }
}

/// UNSUBACK: before 5.0 just the packet identifier; in 5.0 one reason code per filter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnsubAck {
    pub packet_id: u16,
    pub properties: Properties,
    /// Empty before 5.0, which has no reason codes here.
    pub reason_codes: Vec<ReasonCode>,
}

impl UnsubAck {
    pub(crate) fn decode(mut r: Reader, version: ProtocolVersion) -> Result<UnsubAck, DecodeError> {
        if !version.is_v5() && r.remaining() != 2 {
            return Err(DecodeError::InvalidRemainingLength {
                packet: PacketType::UnsubAck,
                expected: 2,
                actual: r.remaining(),
            });
        }
        let packet_id = read_packet_id(&mut r, PacketType::UnsubAck)?;
        let properties = read_properties(&mut r, version, PropertyContext::UnsubAck)?;
        let mut reason_codes = Vec::with_capacity(r.remaining());
        while !r.is_empty() {
            reason_codes.push(read_reason(&mut r, PacketType::UnsubAck)?);
        }
        if version.is_v5() && reason_codes.is_empty() {
            return Err(DecodeError::NoReasonCodes { packet: PacketType::UnsubAck });
        }
        Ok(UnsubAck { packet_id, properties, reason_codes })
    }

    pub(crate) fn body_len(&self, version: ProtocolVersion) -> Result<usize, EncodeError> {
        check_packet_id(self.packet_id, PacketType::UnsubAck)?;
        if !version.is_v5() {
            return Ok(2);
        }
        Ok(2 + self.properties.encoded_len()? + self.reason_codes.len())
    }

    pub(crate) fn write_body(&self, version: ProtocolVersion, buf: &mut BytesMut) {
        buf.put_u16(self.packet_id);
        if version.is_v5() {
            self.properties.write(buf);
            for code in &self.reason_codes {
                buf.put_u8(*code as u8);
            }
        }
    }
}

fn read_properties(r: &mut Reader, version: ProtocolVersion, ctx: PropertyContext) -> Result<Properties, DecodeError> {
    if version.is_v5() { Properties::decode(r, ctx) } else { Ok(Properties::default()) }
}

fn properties_len(props: &Properties, version: ProtocolVersion) -> Result<usize, EncodeError> {
    if version.is_v5() { props.encoded_len() } else { Ok(0) }
}

fn write_properties(props: &Properties, version: ProtocolVersion, buf: &mut BytesMut) {
    if version.is_v5() {
        props.write(buf);
    }
}
