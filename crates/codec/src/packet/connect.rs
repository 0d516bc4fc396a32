//! CONNECT and CONNACK (MQTT 5.0 sections 3.1 and 3.2, 3.1.1 sections 3.1 and 3.2, 3.1 section 3.1).

use bytes::{BufMut, Bytes, BytesMut};
use bytestring::ByteString;

use crate::error::{DecodeError, EncodeError};
use crate::properties::{Properties, PropertyContext};
use crate::reason::ReasonCode;
use crate::topic;
use crate::types::{PacketType, ProtocolVersion, QoS};
use crate::wire::{Reader, field_len, put_field};

/// CONNECT: the first packet of every connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Connect {
    /// The version named by the protocol name and level; the whole connection speaks it.
    pub protocol: ProtocolVersion,
    /// Clean Session (3.x) / Clean Start (5.0).
    pub clean_start: bool,
    /// Seconds; 0 turns keep alive off.
    pub keep_alive: u16,
    pub properties: Properties,
    /// May be empty: the server then assigns one (or refuses, see [MQTT-3.1.3-8]).
    pub client_id: ByteString,
    pub will: Option<Will>,
    pub username: Option<ByteString>,
    pub password: Option<Bytes>,
}

/// The will message of a CONNECT.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Will {
    pub topic: ByteString,
    pub payload: Bytes,
    pub qos: QoS,
    pub retain: bool,
    /// Will properties (5.0 only).
    pub properties: Properties,
}

const FLAG_RESERVED: u8 = 0x01;
const FLAG_CLEAN: u8 = 0x02;
const FLAG_WILL: u8 = 0x04;
const FLAG_WILL_RETAIN: u8 = 0x20;
const FLAG_PASSWORD: u8 = 0x40;
const FLAG_USERNAME: u8 = 0x80;

impl Connect {
    pub(crate) fn decode(mut r: Reader) -> Result<Connect, DecodeError> {
        let name = r.string()?;
        let level = r.u8()?;
        let protocol = match (&*name, level) {
            ("MQTT", 4) => ProtocolVersion::V311,
            ("MQTT", 5) => ProtocolVersion::V5,
            ("MQIsdp", 3) => ProtocolVersion::V31,
            ("MQTT" | "MQIsdp", _) => {
                return Err(DecodeError::UnsupportedProtocolLevel { name: name.to_string(), level });
            }
            _ => return Err(DecodeError::InvalidProtocolName(name.to_string())),
        };
        let flags = r.u8()?;
        if flags & FLAG_RESERVED != 0 {
            return Err(DecodeError::ConnectReservedFlag);
        }
        let will_flag = flags & FLAG_WILL != 0;
        let will_qos_bits = (flags >> 3) & 0x03;
        let will_retain = flags & FLAG_WILL_RETAIN != 0;
        if !will_flag && (will_qos_bits != 0 || will_retain) {
            return Err(DecodeError::WillFlagsWithoutWill);
        }
        let will_qos = QoS::from_u8(will_qos_bits).ok_or(DecodeError::InvalidWillQoS)?;
        let has_username = flags & FLAG_USERNAME != 0;
        let has_password = flags & FLAG_PASSWORD != 0;
        if has_password && !has_username && !protocol.is_v5() {
            return Err(DecodeError::PasswordWithoutUsername);
        }
        let keep_alive = r.u16()?;
        let properties = if protocol.is_v5() {
            Properties::decode(&mut r, PropertyContext::Connect)?
        } else {
            Properties::default()
        };
        let client_id = r.string()?;
        let will = if will_flag {
            let properties = if protocol.is_v5() {
                Properties::decode(&mut r, PropertyContext::Will)?
            } else {
                Properties::default()
            };
            let topic = r.string()?;
            topic::validate_topic_name(&topic).map_err(DecodeError::InvalidTopicName)?;
            let payload = r.binary()?;
            Some(Will { topic, payload, qos: will_qos, retain: will_retain, properties })
        } else {
            None
        };
        let username = if has_username { Some(r.string()?) } else { None };
        let password = if has_password { Some(r.binary()?) } else { None };
        r.finish()?;
        Ok(Connect {
            protocol,
            clean_start: flags & FLAG_CLEAN != 0,
            keep_alive,
            properties,
            client_id,
            will,
            username,
            password,
        })
    }

    fn flags(&self) -> u8 {
        let mut flags = 0;
        if self.clean_start {
            flags |= FLAG_CLEAN;
        }
        if let Some(will) = &self.will {
            flags |= FLAG_WILL | ((will.qos as u8) << 3);
            if will.retain {
                flags |= FLAG_WILL_RETAIN;
            }
        }
        if self.username.is_some() {
            flags |= FLAG_USERNAME;
        }
        if self.password.is_some() {
            flags |= FLAG_PASSWORD;
        }
        flags
    }

    pub(crate) fn body_len(&self) -> Result<usize, EncodeError> {
        let v5 = self.protocol.is_v5();
        let mut len = field_len(self.protocol.protocol_name().as_bytes())? + 1 + 1 + 2;
        if v5 {
            len += self.properties.encoded_len()?;
        }
        len += field_len(self.client_id.as_bytes())?;
        if let Some(will) = &self.will {
            if v5 {
                len += will.properties.encoded_len()?;
            }
            len += field_len(will.topic.as_bytes())? + field_len(&will.payload)?;
        }
        if let Some(u) = &self.username {
            len += field_len(u.as_bytes())?;
        }
        if let Some(p) = &self.password {
            len += field_len(p)?;
        }
        Ok(len)
    }

    pub(crate) fn write_body(&self, buf: &mut BytesMut) {
        let v5 = self.protocol.is_v5();
        put_field(buf, self.protocol.protocol_name().as_bytes());
        buf.put_u8(self.protocol.level());
        buf.put_u8(self.flags());
        buf.put_u16(self.keep_alive);
        if v5 {
            self.properties.write(buf);
        }
        put_field(buf, self.client_id.as_bytes());
        if let Some(will) = &self.will {
            if v5 {
                will.properties.write(buf);
            }
            put_field(buf, will.topic.as_bytes());
            put_field(buf, &will.payload);
        }
        if let Some(u) = &self.username {
            put_field(buf, u.as_bytes());
        }
        if let Some(p) = &self.password {
            put_field(buf, p);
        }
    }
}

/// CONNACK: the server's answer to CONNECT.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnAck {
    pub session_present: bool,
    /// 3.x return codes are mapped onto reason codes, see [`ReasonCode::to_connect_return_code`].
    pub reason_code: ReasonCode,
    pub properties: Properties,
}

impl ConnAck {
    pub(crate) fn decode(mut r: Reader, version: ProtocolVersion) -> Result<ConnAck, DecodeError> {
        let flags = r.u8()?;
        if flags & 0xfe != 0 {
            return Err(DecodeError::InvalidConnAckFlags(flags));
        }
        let code = r.u8()?;
        let (reason_code, properties) = if version.is_v5() {
            let reason = ReasonCode::from_u8(code)
                .filter(|c| c.allowed_in(PacketType::ConnAck))
                .ok_or(DecodeError::InvalidReasonCode { packet: PacketType::ConnAck, code })?;
            (reason, Properties::decode(&mut r, PropertyContext::ConnAck)?)
        } else {
            let reason = ReasonCode::from_connect_return_code(code)
                .ok_or(DecodeError::InvalidReasonCode { packet: PacketType::ConnAck, code })?;
            (reason, Properties::default())
        };
        let session_present = flags & 0x01 != 0;
        if session_present && reason_code.is_error() {
            return Err(DecodeError::SessionPresentOnError);
        }
        r.finish()?;
        Ok(ConnAck { session_present, reason_code, properties })
    }

    pub(crate) fn body_len(&self, version: ProtocolVersion) -> Result<usize, EncodeError> {
        Ok(2 + if version.is_v5() { self.properties.encoded_len()? } else { 0 })
    }

    pub(crate) fn write_body(&self, version: ProtocolVersion, buf: &mut BytesMut) {
        buf.put_u8(u8::from(self.session_present));
        if version.is_v5() {
            buf.put_u8(self.reason_code as u8);
            self.properties.write(buf);
        } else {
            buf.put_u8(self.reason_code.to_connect_return_code());
        }
    }
}
