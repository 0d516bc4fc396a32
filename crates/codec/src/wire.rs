//! The data representations of MQTT section 1.5: integers, Variable Byte Integers, strings and binary data.
//! Reading never panics: every read checks the bytes left and reports `Truncated`.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use bytestring::ByteString;

use crate::error::{DecodeError, EncodeError};
use crate::types::PacketType;

/// The largest remaining length the fixed header can express [MQTT-2.2.3].
pub const MAX_REMAINING_LENGTH: usize = 268_435_455;

/// Reads the fields of one packet's body. Slices of the body are handed out as `Bytes` without copying.
pub(crate) struct Reader {
    buf: Bytes,
    packet: PacketType,
}

impl Reader {
    pub(crate) fn new(buf: Bytes, packet: PacketType) -> Reader {
        Reader { buf, packet }
    }

    pub(crate) fn remaining(&self) -> usize {
        self.buf.len()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    fn need(&self, n: usize) -> Result<(), DecodeError> {
        if self.buf.len() < n { Err(DecodeError::Truncated { packet: self.packet }) } else { Ok(()) }
    }

    pub(crate) fn u8(&mut self) -> Result<u8, DecodeError> {
        self.need(1)?;
        Ok(self.buf.get_u8())
    }

    pub(crate) fn u16(&mut self) -> Result<u16, DecodeError> {
        self.need(2)?;
        Ok(self.buf.get_u16())
    }

    pub(crate) fn u32(&mut self) -> Result<u32, DecodeError> {
        self.need(4)?;
        Ok(self.buf.get_u32())
    }

    /// A Variable Byte Integer [MQTT-1.5.5].
    pub(crate) fn varint(&mut self) -> Result<u32, DecodeError> {
        match parse_varint(&self.buf)? {
            Some((value, used)) => {
                self.buf.advance(used);
                Ok(value)
            }
            None => Err(DecodeError::Truncated { packet: self.packet }),
        }
    }

    pub(crate) fn take(&mut self, n: usize) -> Result<Bytes, DecodeError> {
        self.need(n)?;
        Ok(self.buf.split_to(n))
    }

    /// Binary Data: a two-byte length, then that many bytes [MQTT-1.5.6].
    pub(crate) fn binary(&mut self) -> Result<Bytes, DecodeError> {
        let len = self.u16()? as usize;
        self.take(len)
    }

    /// A UTF-8 Encoded String [MQTT-1.5.4]: well-formed UTF-8 without U+0000.
    pub(crate) fn string(&mut self) -> Result<ByteString, DecodeError> {
        let raw = self.binary()?;
        to_string(raw)
    }

    /// The rest of the body (a PUBLISH payload, for instance).
    pub(crate) fn rest(&mut self) -> Bytes {
        std::mem::take(&mut self.buf)
    }

    /// The body must be used up: anything left is a malformed packet.
    pub(crate) fn finish(self) -> Result<(), DecodeError> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(DecodeError::TrailingBytes { packet: self.packet, extra: self.buf.len() })
        }
    }

    /// A reader over the next `n` bytes only (a property block), advancing this one past them.
    pub(crate) fn sub(&mut self, n: usize) -> Result<Reader, DecodeError> {
        let buf = self.take(n)?;
        Ok(Reader { buf, packet: self.packet })
    }
}

/// Checks `raw` is a valid MQTT string and wraps it without copying.
pub(crate) fn to_string(raw: Bytes) -> Result<ByteString, DecodeError> {
    if raw.contains(&0) {
        return Err(DecodeError::NullCharacter);
    }
    ByteString::try_from(raw).map_err(|_| DecodeError::InvalidUtf8)
}

/// Parses a Variable Byte Integer at the start of `buf`: `Ok(None)` if more bytes are needed, else the value and
/// the number of bytes it used.
pub(crate) fn parse_varint(buf: &[u8]) -> Result<Option<(u32, usize)>, DecodeError> {
    let mut value: u32 = 0;
    for (i, byte) in buf.iter().take(4).enumerate() {
        value |= u32::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            // [MQTT-1.5.5-1]: the minimum number of bytes, so a last byte of 0 is only valid alone.
            if i > 0 && *byte == 0 {
                return Err(DecodeError::MalformedVariableInteger);
            }
            return Ok(Some((value, i + 1)));
        }
    }
    if buf.len() >= 4 { Err(DecodeError::MalformedVariableInteger) } else { Ok(None) }
}

/// Bytes a Variable Byte Integer of `value` takes.
pub(crate) fn varint_len(value: usize) -> usize {
    match value {
        0..=127 => 1,
        128..=16_383 => 2,
        16_384..=2_097_151 => 3,
        _ => 4,
    }
}

/// Appends `value` as a Variable Byte Integer [MQTT-1.5.5]; values above 268,435,455 do not fit MQTT.
pub fn put_varint(buf: &mut BytesMut, mut value: usize) {
    loop {
        let mut byte = (value & 0x7f) as u8;
        value >>= 7;
        if value > 0 {
            byte |= 0x80;
        }
        buf.put_u8(byte);
        if value == 0 {
            break;
        }
    }
}

/// Encoded size of a string or binary field, checking the 65,535-byte limit.
pub(crate) fn field_len(bytes: &[u8]) -> Result<usize, EncodeError> {
    if bytes.len() > u16::MAX as usize { Err(EncodeError::FieldTooLong(bytes.len())) } else { Ok(2 + bytes.len()) }
}

/// Writes a length-prefixed field whose length `field_len` has already checked.
pub(crate) fn put_field(buf: &mut BytesMut, bytes: &[u8]) {
    buf.put_u16(bytes.len() as u16);
    buf.put_slice(bytes);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varint_boundaries_from_the_spec_table() {
        // MQTT 5.0 section 1.5.5, table 1-1.
        for (value, bytes) in [
            (0usize, vec![0x00]),
            (127, vec![0x7f]),
            (128, vec![0x80, 0x01]),
            (16_383, vec![0xff, 0x7f]),
            (16_384, vec![0x80, 0x80, 0x01]),
            (2_097_151, vec![0xff, 0xff, 0x7f]),
            (2_097_152, vec![0x80, 0x80, 0x80, 0x01]),
            (268_435_455, vec![0xff, 0xff, 0xff, 0x7f]),
        ] {
            let mut buf = BytesMut::new();
            put_varint(&mut buf, value);
            assert_eq!(&buf[..], &bytes[..], "encode {value}");
            assert_eq!(varint_len(value), bytes.len());
            assert_eq!(parse_varint(&bytes).unwrap(), Some((value as u32, bytes.len())));
        }
    }

    #[test]
    fn varint_of_five_bytes_is_malformed() {
        assert_eq!(parse_varint(&[0xff, 0xff, 0xff, 0xff, 0x01]), Err(DecodeError::MalformedVariableInteger));
        assert_eq!(parse_varint(&[0xff, 0xff, 0xff, 0xff]), Err(DecodeError::MalformedVariableInteger));
        assert_eq!(parse_varint(&[0xff, 0xff]), Ok(None));
        assert_eq!(parse_varint(&[0x80, 0x00]), Err(DecodeError::MalformedVariableInteger));
        assert_eq!(parse_varint(&[]), Ok(None));
    }

    #[test]
    fn strings_reject_nul_and_bad_utf8() {
        assert_eq!(to_string(Bytes::from_static(b"a\0b")), Err(DecodeError::NullCharacter));
        // An encoded surrogate (U+D800) is not valid UTF-8 [MQTT-1.5.4-1].
        assert_eq!(to_string(Bytes::from_static(&[0xed, 0xa0, 0x80])), Err(DecodeError::InvalidUtf8));
        assert_eq!(to_string(Bytes::from_static("héllo".as_bytes())).unwrap(), "héllo");
    }
}
