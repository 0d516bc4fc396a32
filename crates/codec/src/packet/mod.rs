//! The control packets and the fixed header around them (MQTT 5.0 section 2, 3.1.1 section 2).
//!
//! [`decode`] takes bytes as they arrive and returns a whole packet, `None` for "need more bytes", or a
//! [`DecodeError`]. [`Packet::encode`] appends a packet to a buffer. Neither does I/O.

mod connect;
mod control;
mod publish;
mod subscribe;

pub use connect::{ConnAck, Connect, Will};
pub use control::{Auth, Disconnect};
pub use publish::{Ack, BarePublish, Publish, PublishParts};
pub use subscribe::{RetainHandling, SubAck, Subscribe, SubscriptionOptions, UnsubAck, Unsubscribe};

use bytes::{Buf, BufMut, Bytes, BytesMut};

use crate::error::{DecodeError, EncodeError};
use crate::types::{PacketType, ProtocolVersion};
use crate::wire::{MAX_REMAINING_LENGTH, Reader, parse_varint, put_varint, varint_len};

/// One MQTT control packet, of any version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Packet {
    Connect(Box<Connect>),
    ConnAck(ConnAck),
    Publish(Publish),
    PubAck(Ack),
    PubRec(Ack),
    PubRel(Ack),
    PubComp(Ack),
    Subscribe(Subscribe),
    SubAck(SubAck),
    Unsubscribe(Unsubscribe),
    UnsubAck(UnsubAck),
    PingReq,
    PingResp,
    Disconnect(Disconnect),
    Auth(Auth),
}

/// The largest packet any version can carry: a one-byte type, four bytes of length and the maximum remaining
/// length. Use it as `max_packet_size` for "no limit of our own".
pub const MAX_PACKET_SIZE: usize = 1 + 4 + MAX_REMAINING_LENGTH;

/// Decodes the first packet in `buf`, removing its bytes. `Ok(None)` means more bytes are needed (nothing is
/// consumed). `version` is the connection's protocol version; CONNECT carries its own and ignores it.
///
/// A packet whose fixed header claims more than `max_packet_size` bytes (header included, as MQTT 5.0's Maximum
/// Packet Size counts) is refused as soon as the header has arrived, before its body is buffered.
pub fn decode(
    buf: &mut BytesMut,
    version: ProtocolVersion,
    max_packet_size: usize,
) -> Result<Option<Packet>, DecodeError> {
    let Some((packet, size, len_bytes)) = frame_header(buf, version, max_packet_size)? else { return Ok(None) };
    decode_frame(buf.split_to(size).freeze(), packet, len_bytes, version).map(Some)
}

/// [`decode`] for bytes already received whole (a stored or forwarded packet): the packet's fields are slices of
/// `buf`, nothing is copied.
pub fn decode_bytes(
    buf: &mut Bytes,
    version: ProtocolVersion,
    max_packet_size: usize,
) -> Result<Option<Packet>, DecodeError> {
    let Some((packet, size, len_bytes)) = frame_header(buf, version, max_packet_size)? else { return Ok(None) };
    decode_frame(buf.split_to(size), packet, len_bytes, version).map(Some)
}

/// The PUBLISH at the start of `buf` (bytes received whole: a stored or forwarded packet) when it has no
/// properties, decoded without building a [`Publish`] (whose `Properties` are hundreds of bytes to set up and move
/// for every message). `Ok(None)`, with `buf` as it was, when the packet there is not a whole PUBLISH or has
/// properties: [`decode_bytes`] then decodes it. Malformed input gives the error [`decode_bytes`] would.
pub fn decode_publish_parts(
    buf: &mut Bytes,
    version: ProtocolVersion,
    max_packet_size: usize,
) -> Result<Option<PublishParts>, DecodeError> {
    let Some((packet, size, len_bytes)) = frame_header(buf, version, max_packet_size)? else { return Ok(None) };
    if packet != PacketType::Publish {
        return Ok(None);
    }
    let flags = buf[0] & 0x0f;
    let r = Reader::new(buf.slice(1 + len_bytes..size), packet);
    let parts = Publish::decode_parts(r, flags, version)?;
    if parts.is_some() {
        buf.advance(size);
    }
    Ok(parts)
}

/// The whole size of the packet at the start of `buf` (fixed header included), once its fixed header is there;
/// `None` while it is not, or when its length field is malformed. For walking packets already encoded.
pub fn packet_size(buf: &[u8]) -> Option<usize> {
    let (remaining, len_bytes) = parse_varint(buf.get(1..)?).ok()??;
    Some(1 + len_bytes + remaining as usize)
}

/// The type, whole size and length-field size of the packet at the start of `buf`, once its fixed header is there.
fn frame_header(
    buf: &[u8],
    version: ProtocolVersion,
    max_packet_size: usize,
) -> Result<Option<(PacketType, usize, usize)>, DecodeError> {
    let Some(&first) = buf.first() else { return Ok(None) };
    let packet = packet_type(first, version)?;
    let Some((remaining, len_bytes)) = parse_varint(buf.get(1..).unwrap_or_default())? else {
        return Ok(None);
    };
    let size = 1 + len_bytes + remaining as usize;
    if size > max_packet_size {
        return Err(DecodeError::PacketTooLarge { size, max: max_packet_size });
    }
    if buf.len() < size {
        // No reserve here: a claimed size is not yet a reason to allocate (the caller grows its buffer as bytes come).
        return Ok(None);
    }
    Ok(Some((packet, size, len_bytes)))
}

/// The packet in `frame`, exactly one whole packet whose header `frame_header` read.
fn decode_frame(
    mut frame: Bytes,
    packet: PacketType,
    len_bytes: usize,
    version: ProtocolVersion,
) -> Result<Packet, DecodeError> {
    let flags = frame[0] & 0x0f;
    let body = frame.split_off(1 + len_bytes);
    let r = Reader::new(body, packet);
    Ok(match packet {
        PacketType::Connect => Packet::Connect(Box::new(Connect::decode(r)?)),
        PacketType::ConnAck => Packet::ConnAck(ConnAck::decode(r, version)?),
        PacketType::Publish => Packet::Publish(Publish::decode(r, flags, version)?),
        PacketType::PubAck => Packet::PubAck(Ack::decode(r, packet, version)?),
        PacketType::PubRec => Packet::PubRec(Ack::decode(r, packet, version)?),
        PacketType::PubRel => Packet::PubRel(Ack::decode(r, packet, version)?),
        PacketType::PubComp => Packet::PubComp(Ack::decode(r, packet, version)?),
        PacketType::Subscribe => Packet::Subscribe(Subscribe::decode(r, version)?),
        PacketType::SubAck => Packet::SubAck(SubAck::decode(r, version)?),
        PacketType::Unsubscribe => Packet::Unsubscribe(Unsubscribe::decode(r, version)?),
        PacketType::UnsubAck => Packet::UnsubAck(UnsubAck::decode(r, version)?),
        PacketType::PingReq => {
            expect_empty(&r, packet)?;
            Packet::PingReq
        }
        PacketType::PingResp => {
            expect_empty(&r, packet)?;
            Packet::PingResp
        }
        PacketType::Disconnect => Packet::Disconnect(Disconnect::decode(r, version)?),
        PacketType::Auth => Packet::Auth(Auth::decode(r)?),
    })
}

/// The packet type of a first byte, with its reserved flags checked [MQTT-2.2.2-2].
fn packet_type(first: u8, version: ProtocolVersion) -> Result<PacketType, DecodeError> {
    let kind = first >> 4;
    let packet = match PacketType::from_u8(kind) {
        Some(PacketType::Auth) if !version.is_v5() => return Err(DecodeError::ReservedPacketType(kind)),
        Some(p) => p,
        None => return Err(DecodeError::ReservedPacketType(kind)),
    };
    let flags = first & 0x0f;
    if packet != PacketType::Publish && flags != packet.required_flags() {
        return Err(DecodeError::InvalidHeaderFlags { packet, flags });
    }
    Ok(packet)
}

pub(crate) fn expect_empty(r: &Reader, packet: PacketType) -> Result<(), DecodeError> {
    if r.is_empty() {
        Ok(())
    } else {
        Err(DecodeError::InvalidRemainingLength { packet, expected: 0, actual: r.remaining() })
    }
}

impl Packet {
    pub fn packet_type(&self) -> PacketType {
        match self {
            Packet::Connect(_) => PacketType::Connect,
            Packet::ConnAck(_) => PacketType::ConnAck,
            Packet::Publish(_) => PacketType::Publish,
            Packet::PubAck(_) => PacketType::PubAck,
            Packet::PubRec(_) => PacketType::PubRec,
            Packet::PubRel(_) => PacketType::PubRel,
            Packet::PubComp(_) => PacketType::PubComp,
            Packet::Subscribe(_) => PacketType::Subscribe,
            Packet::SubAck(_) => PacketType::SubAck,
            Packet::Unsubscribe(_) => PacketType::Unsubscribe,
            Packet::UnsubAck(_) => PacketType::UnsubAck,
            Packet::PingReq => PacketType::PingReq,
            Packet::PingResp => PacketType::PingResp,
            Packet::Disconnect(_) => PacketType::Disconnect,
            Packet::Auth(_) => PacketType::Auth,
        }
    }

    fn first_byte(&self) -> u8 {
        let kind = self.packet_type();
        let flags = match self {
            Packet::Publish(p) => p.header_flags(),
            _ => kind.required_flags(),
        };
        ((kind as u8) << 4) | flags
    }

    fn body_len(&self, version: ProtocolVersion) -> Result<usize, EncodeError> {
        match self {
            Packet::Connect(p) => p.body_len(),
            Packet::ConnAck(p) => p.body_len(version),
            Packet::Publish(p) => p.body_len(version),
            Packet::PubAck(p) | Packet::PubRec(p) | Packet::PubRel(p) | Packet::PubComp(p) => {
                p.body_len(self.packet_type(), version)
            }
            Packet::Subscribe(p) => p.body_len(version),
            Packet::SubAck(p) => p.body_len(version),
            Packet::Unsubscribe(p) => p.body_len(version),
            Packet::UnsubAck(p) => p.body_len(version),
            Packet::PingReq | Packet::PingResp => Ok(0),
            Packet::Disconnect(p) => p.body_len(version),
            Packet::Auth(p) => {
                if !version.is_v5() {
                    return Err(EncodeError::NotInVersion { packet: PacketType::Auth, version });
                }
                p.body_len()
            }
        }
    }

    fn write_body(&self, version: ProtocolVersion, buf: &mut BytesMut) {
        match self {
            Packet::Connect(p) => p.write_body(buf),
            Packet::ConnAck(p) => p.write_body(version, buf),
            Packet::Publish(p) => p.write_body(version, buf),
            Packet::PubAck(p) | Packet::PubRec(p) | Packet::PubRel(p) | Packet::PubComp(p) => {
                p.write_body(version, buf)
            }
            Packet::Subscribe(p) => p.write_body(version, buf),
            Packet::SubAck(p) => p.write_body(version, buf),
            Packet::Unsubscribe(p) => p.write_body(version, buf),
            Packet::UnsubAck(p) => p.write_body(version, buf),
            Packet::PingReq | Packet::PingResp => {}
            Packet::Disconnect(p) => p.write_body(version, buf),
            Packet::Auth(p) => p.write_body(buf),
        }
    }

    /// Appends the packet, encoded for `version`, to `buf`; returns the bytes written. Fields `version` cannot carry
    /// (properties and reason codes before 5.0) are left out. CONNECT is written in its own `protocol` version.
    pub fn encode(&self, version: ProtocolVersion, buf: &mut BytesMut) -> Result<usize, EncodeError> {
        let len = self.body_len(version)?;
        if len > MAX_REMAINING_LENGTH {
            return Err(EncodeError::PacketTooLarge(len));
        }
        let total = 1 + varint_len(len) + len;
        buf.reserve(total);
        let start = buf.len();
        buf.put_u8(self.first_byte());
        put_varint(buf, len);
        self.write_body(version, buf);
        debug_assert_eq!(buf.len() - start, total, "{:?}: computed length differs from written", self.packet_type());
        Ok(total)
    }

    /// The encoded size for `version`, header included: what a receiver's Maximum Packet Size is compared with.
    pub fn encoded_len(&self, version: ProtocolVersion) -> Result<usize, EncodeError> {
        let len = self.body_len(version)?;
        Ok(1 + varint_len(len) + len)
    }
}

/// A non-zero packet identifier, for the packets that need one [MQTT-2.2.1-3].
pub(crate) fn read_packet_id(r: &mut Reader, packet: PacketType) -> Result<u16, DecodeError> {
    match r.u16()? {
        0 => Err(DecodeError::PacketIdZero { packet }),
        id => Ok(id),
    }
}

pub(crate) fn check_packet_id(id: u16, packet: PacketType) -> Result<(), EncodeError> {
    if id == 0 { Err(EncodeError::PacketIdZero { packet }) } else { Ok(()) }
}

/// A reason code byte that `packet` allows.
pub(crate) fn read_reason(r: &mut Reader, packet: PacketType) -> Result<crate::ReasonCode, DecodeError> {
    let code = r.u8()?;
    crate::ReasonCode::from_u8(code)
        .filter(|c| c.allowed_in(packet))
        .ok_or(DecodeError::InvalidReasonCode { packet, code })
}
