//! MQTT 5.0 properties (section 2.2.2): one struct for every packet, with the table of which packet allows which
//! property, and the value rules the specification makes protocol errors.

use bytes::{BufMut, Bytes, BytesMut};
use bytestring::ByteString;

use crate::error::{DecodeError, EncodeError};
use crate::topic;
use crate::wire::{Reader, field_len, put_field, put_varint, varint_len};

/// Where a property block stands; each allows its own set of properties (MQTT 5.0 section 2.2.2.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PropertyContext {
    Connect,
    Will,
    ConnAck,
    Publish,
    /// PUBACK, PUBREC, PUBREL and PUBCOMP allow the same two properties.
    PubAck,
    Subscribe,
    SubAck,
    Unsubscribe,
    UnsubAck,
    Disconnect,
    Auth,
}

impl PropertyContext {
    fn bit(self) -> u16 {
        1 << (self as u16)
    }

    fn name(self) -> &'static str {
        match self {
            PropertyContext::Connect => "CONNECT",
            PropertyContext::Will => "will properties",
            PropertyContext::ConnAck => "CONNACK",
            PropertyContext::Publish => "PUBLISH",
            PropertyContext::PubAck => "PUBACK/PUBREC/PUBREL/PUBCOMP",
            PropertyContext::Subscribe => "SUBSCRIBE",
            PropertyContext::SubAck => "SUBACK",
            PropertyContext::Unsubscribe => "UNSUBSCRIBE",
            PropertyContext::UnsubAck => "UNSUBACK",
            PropertyContext::Disconnect => "DISCONNECT",
            PropertyContext::Auth => "AUTH",
        }
    }
}

/// Which contexts allow property `id` (MQTT 5.0 section 2.2.2.2, table 2-4); `None` if no property has that id.
fn contexts_of(id: u8) -> Option<u16> {
    use PropertyContext::*;
    let set = |cs: &[PropertyContext]| cs.iter().fold(0u16, |acc, c| acc | c.bit());
    Some(match id {
        0x01 | 0x02 | 0x03 | 0x08 | 0x09 => set(&[Publish, Will]),
        0x0B => set(&[Publish, Subscribe]),
        0x11 => set(&[Connect, ConnAck, Disconnect]),
        0x12 | 0x13 | 0x1A | 0x24 | 0x25 | 0x28 | 0x29 | 0x2A => set(&[ConnAck]),
        0x15 | 0x16 => set(&[Connect, ConnAck, Auth]),
        0x17 | 0x19 => set(&[Connect]),
        0x18 => set(&[Will]),
        0x1C => set(&[ConnAck, Disconnect]),
        0x1F => set(&[ConnAck, PubAck, SubAck, UnsubAck, Disconnect, Auth]),
        0x21 | 0x22 | 0x27 => set(&[Connect, ConnAck]),
        0x23 => set(&[Publish]),
        0x26 => 0xffff,
        _ => return None,
    })
}

/// One value type of section 1.5: how it is read, sized and written.
trait Value: Sized {
    fn read(r: &mut Reader) -> Result<Self, DecodeError>;
    fn wire_len(&self) -> Result<usize, EncodeError>;
    fn write(&self, buf: &mut BytesMut);
    /// The value as a number, for the range rules; `None` for strings and binary data.
    fn number(&self) -> Option<u32> {
        None
    }
}

impl Value for u8 {
    fn read(r: &mut Reader) -> Result<Self, DecodeError> {
        r.u8()
    }
    fn wire_len(&self) -> Result<usize, EncodeError> {
        Ok(1)
    }
    fn write(&self, buf: &mut BytesMut) {
        buf.put_u8(*self)
    }
    fn number(&self) -> Option<u32> {
        Some(u32::from(*self))
    }
}

impl Value for u16 {
    fn read(r: &mut Reader) -> Result<Self, DecodeError> {
        r.u16()
    }
    fn wire_len(&self) -> Result<usize, EncodeError> {
        Ok(2)
    }
    fn write(&self, buf: &mut BytesMut) {
        buf.put_u16(*self)
    }
    fn number(&self) -> Option<u32> {
        Some(u32::from(*self))
    }
}

impl Value for u32 {
    fn read(r: &mut Reader) -> Result<Self, DecodeError> {
        r.u32()
    }
    fn wire_len(&self) -> Result<usize, EncodeError> {
        Ok(4)
    }
    fn write(&self, buf: &mut BytesMut) {
        buf.put_u32(*self)
    }
    fn number(&self) -> Option<u32> {
        Some(*self)
    }
}

impl Value for ByteString {
    fn read(r: &mut Reader) -> Result<Self, DecodeError> {
        r.string()
    }
    fn wire_len(&self) -> Result<usize, EncodeError> {
        field_len(self.as_bytes())
    }
    fn write(&self, buf: &mut BytesMut) {
        put_field(buf, self.as_bytes())
    }
}

impl Value for Bytes {
    fn read(r: &mut Reader) -> Result<Self, DecodeError> {
        r.binary()
    }
    fn wire_len(&self) -> Result<usize, EncodeError> {
        field_len(self)
    }
    fn write(&self, buf: &mut BytesMut) {
        put_field(buf, self)
    }
}

/// The numeric range rules: flags are 0 or 1, some values may not be 0 (MQTT 5.0 sections 3.1.2.11, 3.2.2.3, 3.3.2.3).
fn check_number(id: u8, value: u32) -> Result<(), DecodeError> {
    let ok = match id {
        // Payload Format Indicator, Request Problem/Response Information, Maximum QoS and the *Available flags.
        0x01 | 0x17 | 0x19 | 0x24 | 0x25 | 0x28 | 0x29 | 0x2A => value <= 1,
        // Receive Maximum, Maximum Packet Size.
        0x21 | 0x27 => value != 0,
        // [MQTT-3.3.2-8]
        0x23 if value == 0 => return Err(DecodeError::TopicAliasZero),
        _ => true,
    };
    if ok { Ok(()) } else { Err(DecodeError::InvalidPropertyValue { id, value }) }
}

macro_rules! properties {
    ($( $(#[$doc:meta])* $id:literal => $field:ident: $ty:ty ),* $(,)?) => {
        /// The properties of one packet, as values (see [`Properties`], which holds them). Fields a packet does not
        /// allow stay `None`; decoding rejects them.
        #[derive(Debug, Clone, Default, PartialEq, Eq)]
        pub struct PropertyValues {
            $( $(#[$doc])* pub $field: Option<$ty>, )*
            /// 0x0B Subscription Identifier: one in SUBSCRIBE, one per matching subscription in PUBLISH to a client.
            pub subscription_identifiers: Vec<u32>,
            /// 0x26 User Property, in order; a name may repeat [MQTT-3.3.2-18].
            pub user_properties: Vec<(ByteString, ByteString)>,
        }

        /// No property set: what an absent block reads as.
        static NO_VALUES: PropertyValues = PropertyValues {
            $( $field: None, )*
            subscription_identifiers: Vec::new(),
            user_properties: Vec::new(),
        };

        impl PropertyValues {
            /// True when no property is set (an empty block encodes as one zero byte).
            pub fn is_empty(&self) -> bool {
                $( self.$field.is_none() && )* self.subscription_identifiers.is_empty() && self.user_properties.is_empty()
            }

            /// Reads the properties of a block of `len` bytes for `ctx`.
            fn decode_body(r: &mut Reader, len: usize, ctx: PropertyContext) -> Result<PropertyValues, DecodeError> {
                let mut r = r.sub(len)?;
                let mut props = PropertyValues::default();
                while !r.is_empty() {
                    let raw_id = r.varint()?;
                    let id = u8::try_from(raw_id).map_err(|_| DecodeError::UnknownProperty(0xff))?;
                    let allowed = contexts_of(id).ok_or(DecodeError::UnknownProperty(id))?;
                    if allowed & ctx.bit() == 0 {
                        return Err(DecodeError::PropertyNotAllowed { id, context: ctx.name() });
                    }
                    match id {
                        $( $id => {
                            if props.$field.is_some() {
                                return Err(DecodeError::DuplicateProperty(id));
                            }
                            let value = <$ty as Value>::read(&mut r)?;
                            if let Some(n) = value.number() {
                                check_number(id, n)?;
                            }
                            props.$field = Some(value);
                        } )*
                        0x0B => {
                            let value = r.varint()?;
                            if value == 0 {
                                return Err(DecodeError::InvalidPropertyValue { id, value });
                            }
                            if ctx == PropertyContext::Subscribe && !props.subscription_identifiers.is_empty() {
                                return Err(DecodeError::DuplicateProperty(id));
                            }
                            props.subscription_identifiers.push(value);
                        }
                        0x26 => {
                            let name = r.string()?;
                            let value = r.string()?;
                            props.user_properties.push((name, value));
                        }
                        _ => return Err(DecodeError::UnknownProperty(id)),
                    }
                }
                props.check()?;
                Ok(props)
            }

            /// Drops every property `ctx` does not allow (see [`Properties::retain_allowed`]).
            pub fn retain_allowed(&mut self, ctx: PropertyContext) {
                let allows = |id: u8| contexts_of(id).is_some_and(|set| set & ctx.bit() != 0);
                $( if !allows($id) { self.$field = None; } )*
                if !allows(0x0B) {
                    self.subscription_identifiers.clear();
                }
            }

            /// Bytes of the properties themselves, without the length in front.
            fn body_len(&self) -> Result<usize, EncodeError> {
                let mut len = 0;
                $( if let Some(v) = &self.$field { len += 1 + v.wire_len()?; } )*
                for id in &self.subscription_identifiers {
                    if *id == 0 || *id as usize > crate::wire::MAX_REMAINING_LENGTH {
                        return Err(EncodeError::InvalidValue("Subscription Identifier must be 1 to 268,435,455"));
                    }
                    len += 1 + varint_len(*id as usize);
                }
                for (k, v) in &self.user_properties {
                    len += 1 + field_len(k.as_bytes())? + field_len(v.as_bytes())?;
                }
                Ok(len)
            }

            fn write_body(&self, buf: &mut BytesMut) {
                $( if let Some(v) = &self.$field { buf.put_u8($id); v.write(buf); } )*
                for id in &self.subscription_identifiers {
                    buf.put_u8(0x0B);
                    put_varint(buf, *id as usize);
                }
                for (k, v) in &self.user_properties {
                    buf.put_u8(0x26);
                    put_field(buf, k.as_bytes());
                    put_field(buf, v.as_bytes());
                }
            }
        }
    };
}

properties! {
    /// 0x01 Payload Format Indicator: 1 means the payload is UTF-8.
    0x01 => payload_format_indicator: u8,
    /// 0x02 Message Expiry Interval, seconds.
    0x02 => message_expiry_interval: u32,
    /// 0x03 Content Type.
    0x03 => content_type: ByteString,
    /// 0x08 Response Topic, a topic name.
    0x08 => response_topic: ByteString,
    /// 0x09 Correlation Data.
    0x09 => correlation_data: Bytes,
    /// 0x11 Session Expiry Interval, seconds.
    0x11 => session_expiry_interval: u32,
    /// 0x12 Assigned Client Identifier.
    0x12 => assigned_client_identifier: ByteString,
    /// 0x13 Server Keep Alive, seconds.
    0x13 => server_keep_alive: u16,
    /// 0x15 Authentication Method.
    0x15 => authentication_method: ByteString,
    /// 0x16 Authentication Data.
    0x16 => authentication_data: Bytes,
    /// 0x17 Request Problem Information.
    0x17 => request_problem_information: u8,
    /// 0x18 Will Delay Interval, seconds.
    0x18 => will_delay_interval: u32,
    /// 0x19 Request Response Information.
    0x19 => request_response_information: u8,
    /// 0x1A Response Information.
    0x1A => response_information: ByteString,
    /// 0x1C Server Reference.
    0x1C => server_reference: ByteString,
    /// 0x1F Reason String.
    0x1F => reason_string: ByteString,
    /// 0x21 Receive Maximum (not 0).
    0x21 => receive_maximum: u16,
    /// 0x22 Topic Alias Maximum.
    0x22 => topic_alias_maximum: u16,
    /// 0x23 Topic Alias (not 0).
    0x23 => topic_alias: u16,
    /// 0x24 Maximum QoS (0 or 1; absent means 2).
    0x24 => maximum_qos: u8,
    /// 0x25 Retain Available.
    0x25 => retain_available: u8,
    /// 0x27 Maximum Packet Size (not 0).
    0x27 => maximum_packet_size: u32,
    /// 0x28 Wildcard Subscription Available.
    0x28 => wildcard_subscription_available: u8,
    /// 0x29 Subscription Identifier Available.
    0x29 => subscription_identifier_available: u8,
    /// 0x2A Shared Subscription Available.
    0x2A => shared_subscription_available: u8,
}

impl PropertyValues {
    /// Rules between properties of one block.
    fn check(&self) -> Result<(), DecodeError> {
        if let Some(topic) = &self.response_topic {
            // [MQTT-3.1.2-28] [MQTT-3.3.2-14]: the Response Topic is a topic name.
            topic::validate_topic_name(topic).map_err(DecodeError::InvalidTopicName)?;
        }
        if self.authentication_data.is_some() && self.authentication_method.is_none() {
            return Err(DecodeError::AuthDataWithoutMethod);
        }
        Ok(())
    }
}

/// The property block of one packet. Nearly every packet has none, so the values are boxed, and only when there are
/// any: a packet without properties carries one null pointer rather than hundreds of bytes, moved with it at every
/// step (every `Packet`, a PUBACK too, was as large as its largest variant's properties). Reads and writes go
/// straight to the values (`props.message_expiry_interval`, through `Deref`/`DerefMut`); a write makes the box.
#[derive(Clone, Default)]
pub struct Properties(Option<Box<PropertyValues>>);

impl std::ops::Deref for Properties {
    type Target = PropertyValues;

    fn deref(&self) -> &PropertyValues {
        self.0.as_deref().unwrap_or(&NO_VALUES)
    }
}

/// Makes the box if there is none yet: a write through it, even one that sets nothing, allocates. Check before
/// writing where nearly every packet has no properties (see [`Properties::take`] for moving values out).
impl std::ops::DerefMut for Properties {
    fn deref_mut(&mut self) -> &mut PropertyValues {
        self.0.get_or_insert_default()
    }
}

impl From<PropertyValues> for Properties {
    fn from(values: PropertyValues) -> Properties {
        if values.is_empty() { Properties(None) } else { Properties(Some(Box::new(values))) }
    }
}

impl PartialEq for Properties {
    fn eq(&self, other: &Properties) -> bool {
        **self == **other
    }
}

impl Eq for Properties {}

impl std::fmt::Debug for Properties {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        (**self).fmt(f)
    }
}

impl Properties {
    /// The values, leaving none.
    pub fn take(&mut self) -> PropertyValues {
        self.0.take().map(|b| *b).unwrap_or_default()
    }

    /// The values to change, if there are any (no box is made).
    pub fn values_mut(&mut self) -> Option<&mut PropertyValues> {
        self.0.as_deref_mut()
    }

    /// True when no property is set (an empty block encodes as one zero byte).
    pub fn is_empty(&self) -> bool {
        self.0.as_deref().is_none_or(PropertyValues::is_empty)
    }

    /// Reads a property block (its length, then the properties) for `ctx`.
    pub(crate) fn decode(r: &mut Reader, ctx: PropertyContext) -> Result<Properties, DecodeError> {
        let len = r.varint()? as usize;
        if len == 0 {
            return Ok(Properties(None));
        }
        PropertyValues::decode_body(r, len, ctx).map(Properties::from)
    }

    /// Drops every property `ctx` does not allow: what a will's properties need before the will is published (Will
    /// Delay Interval is not a PUBLISH property), for instance.
    pub fn retain_allowed(&mut self, ctx: PropertyContext) {
        if let Some(values) = self.0.as_deref_mut() {
            values.retain_allowed(ctx);
            if values.is_empty() {
                self.0 = None;
            }
        }
    }

    /// Bytes the block takes on the wire, its length included.
    pub(crate) fn encoded_len(&self) -> Result<usize, EncodeError> {
        let len = self.body_len()?;
        Ok(varint_len(len) + len)
    }

    /// Writes the block (length, then properties). Call [`Properties::encoded_len`] first: it checks the limits.
    pub(crate) fn write(&self, buf: &mut BytesMut) {
        // body_len succeeded in encoded_len, which every caller runs first.
        let len = self.body_len().unwrap_or(0);
        put_varint(buf, len);
        self.write_body(buf);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::PacketType;

    fn decode(bytes: &[u8], ctx: PropertyContext) -> Result<Properties, DecodeError> {
        let mut r = Reader::new(Bytes::copy_from_slice(bytes), PacketType::Publish);
        Properties::decode(&mut r, ctx)
    }

    #[test]
    fn every_property_is_checked_against_its_contexts() {
        // Session Expiry Interval in PUBLISH is not allowed.
        assert_eq!(
            decode(&[5, 0x11, 0, 0, 0, 10], PropertyContext::Publish),
            Err(DecodeError::PropertyNotAllowed { id: 0x11, context: "PUBLISH" })
        );
        assert_eq!(
            decode(&[5, 0x11, 0, 0, 0, 10], PropertyContext::Connect).unwrap().session_expiry_interval,
            Some(10)
        );
    }

    #[test]
    fn duplicates_are_protocol_errors_except_user_properties() {
        assert_eq!(decode(&[4, 0x01, 1, 0x01, 1], PropertyContext::Publish), Err(DecodeError::DuplicateProperty(0x01)));
        assert_eq!(
            decode(&[10, 0x26, 0, 1, b'a'], PropertyContext::Publish),
            Err(DecodeError::Truncated { packet: PacketType::Publish }),
            "a block claiming more bytes than there are"
        );
        let p = decode(&[12, 0x26, 0, 1, b'a', 0, 0, 0x26, 0, 1, b'a', 0, 0], PropertyContext::Publish).unwrap();
        assert_eq!(p.user_properties.len(), 2);
    }

    #[test]
    fn value_rules() {
        assert_eq!(
            decode(&[2, 0x01, 2], PropertyContext::Publish),
            Err(DecodeError::InvalidPropertyValue { id: 0x01, value: 2 })
        );
        assert_eq!(decode(&[3, 0x23, 0, 0], PropertyContext::Publish), Err(DecodeError::TopicAliasZero));
        assert_eq!(
            decode(&[3, 0x21, 0, 0], PropertyContext::Connect),
            Err(DecodeError::InvalidPropertyValue { id: 0x21, value: 0 })
        );
        assert_eq!(
            decode(&[2, 0x0B, 0], PropertyContext::Subscribe),
            Err(DecodeError::InvalidPropertyValue { id: 0x0B, value: 0 })
        );
        assert_eq!(
            decode(&[4, 0x0B, 1, 0x0B, 2], PropertyContext::Subscribe),
            Err(DecodeError::DuplicateProperty(0x0B))
        );
        assert_eq!(
            decode(&[4, 0x0B, 1, 0x0B, 2], PropertyContext::Publish).unwrap().subscription_identifiers,
            vec![1, 2]
        );
        assert_eq!(decode(&[1, 0x00], PropertyContext::Publish), Err(DecodeError::UnknownProperty(0)));
        assert_eq!(decode(&[4, 0x16, 0, 1, 7], PropertyContext::Connect), Err(DecodeError::AuthDataWithoutMethod));
        assert!(matches!(
            decode(&[5, 0x08, 0, 2, b'a', b'#'], PropertyContext::Publish),
            Err(DecodeError::InvalidTopicName(_))
        ));
    }

    #[test]
    fn encode_then_decode_is_identity() {
        let p = Properties::from(PropertyValues {
            payload_format_indicator: Some(1),
            message_expiry_interval: Some(60),
            content_type: Some("text/plain".into()),
            response_topic: Some("reply/to".into()),
            correlation_data: Some(Bytes::from_static(b"\x01\x02")),
            subscription_identifiers: vec![1, 268_435_455],
            user_properties: vec![("k".into(), "v".into()), ("k".into(), "w".into())],
            topic_alias: Some(3),
            ..PropertyValues::default()
        });
        let mut buf = BytesMut::new();
        let len = p.encoded_len().unwrap();
        p.write(&mut buf);
        assert_eq!(buf.len(), len);
        assert_eq!(decode(&buf, PropertyContext::Publish).unwrap(), p);
    }
}
