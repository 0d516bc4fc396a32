//! DISCONNECT and AUTH (MQTT 5.0 sections 3.14 and 3.15; 3.1.1 section 3.14).

use bytes::BytesMut;

use super::publish::{Tail, tail};
use super::{expect_empty, read_reason};
use crate::error::{DecodeError, EncodeError};
use crate::properties::{Properties, PropertyContext};
use crate::reason::ReasonCode;
use crate::types::{PacketType, ProtocolVersion};
use crate::wire::Reader;
use bytes::BufMut;

/// DISCONNECT. Before 5.0 it has no body and is only sent by the client.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Disconnect {
    pub reason_code: ReasonCode,
    pub properties: Properties,
}

impl Disconnect {
    pub fn new(reason_code: ReasonCode) -> Disconnect {
        Disconnect { reason_code, properties: Properties::default() }
    }

    pub(crate) fn decode(r: Reader, version: ProtocolVersion) -> Result<Disconnect, DecodeError> {
        if !version.is_v5() {
            expect_empty(&r, PacketType::Disconnect)?;
            return Ok(Disconnect::default());
        }
        let (reason_code, properties) = decode_tail(r, PacketType::Disconnect, PropertyContext::Disconnect)?;
        Ok(Disconnect { reason_code, properties })
    }

    pub(crate) fn body_len(&self, version: ProtocolVersion) -> Result<usize, EncodeError> {
        tail_len(tail(version, self.reason_code, &self.properties), &self.properties)
    }

    pub(crate) fn write_body(&self, version: ProtocolVersion, buf: &mut BytesMut) {
        write_tail(tail(version, self.reason_code, &self.properties), self.reason_code, &self.properties, buf)
    }
}

/// AUTH: a step of enhanced authentication (5.0 only).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Auth {
    pub reason_code: ReasonCode,
    pub properties: Properties,
}

impl Auth {
    pub(crate) fn decode(r: Reader) -> Result<Auth, DecodeError> {
        let (reason_code, properties) = decode_tail(r, PacketType::Auth, PropertyContext::Auth)?;
        Ok(Auth { reason_code, properties })
    }

    pub(crate) fn body_len(&self) -> Result<usize, EncodeError> {
        tail_len(tail(ProtocolVersion::V5, self.reason_code, &self.properties), &self.properties)
    }

    pub(crate) fn write_body(&self, buf: &mut BytesMut) {
        let t = tail(ProtocolVersion::V5, self.reason_code, &self.properties);
        write_tail(t, self.reason_code, &self.properties, buf)
    }
}

/// A body that is just "reason code, properties", each part optional when empty (sections 3.14.2.1, 3.15.2.1).
fn decode_tail(
    mut r: Reader,
    packet: PacketType,
    ctx: PropertyContext,
) -> Result<(ReasonCode, Properties), DecodeError> {
    let reason = if r.is_empty() { ReasonCode::Success } else { read_reason(&mut r, packet)? };
    let props = if r.is_empty() { Properties::default() } else { Properties::decode(&mut r, ctx)? };
    r.finish()?;
    Ok((reason, props))
}

fn tail_len(t: Tail, props: &Properties) -> Result<usize, EncodeError> {
    Ok(match t {
        Tail::None => 0,
        Tail::Reason => 1,
        Tail::All => 1 + props.encoded_len()?,
    })
}

fn write_tail(t: Tail, reason: ReasonCode, props: &Properties, buf: &mut BytesMut) {
    match t {
        Tail::None => {}
        Tail::Reason => buf.put_u8(reason as u8),
        Tail::All => {
            buf.put_u8(reason as u8);
            props.write(buf);
        }
    }
}
