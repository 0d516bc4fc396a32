//! Helpers shared by the codec's integration tests.
#![allow(dead_code)]

use skein_codec::{BytesMut, DecodeError, MAX_PACKET_SIZE, Packet, ProtocolVersion, decode};

/// `bytes` decode to `packet` with nothing left over, and `packet` encodes to exactly `bytes`.
pub fn both_ways(bytes: &[u8], version: ProtocolVersion, packet: Packet) {
    let mut buf = BytesMut::from(bytes);
    assert_eq!(decode(&mut buf, version, MAX_PACKET_SIZE), Ok(Some(packet.clone())), "decoding {bytes:02x?}");
    assert!(buf.is_empty(), "bytes left after decoding");
    let mut out = BytesMut::new();
    packet.encode(version, &mut out).expect("encodes");
    assert_eq!(&out[..], bytes, "encoding {packet:?}");
}

/// `bytes` decode to `packet` (a non-canonical form the encoder would not write).
pub fn decodes_to(bytes: &[u8], version: ProtocolVersion, packet: Packet) {
    let mut buf = BytesMut::from(bytes);
    assert_eq!(decode(&mut buf, version, MAX_PACKET_SIZE), Ok(Some(packet)), "decoding {bytes:02x?}");
    assert!(buf.is_empty());
}

/// `bytes` are refused with `error`.
pub fn refused(bytes: &[u8], version: ProtocolVersion, error: DecodeError) {
    let mut buf = BytesMut::from(bytes);
    assert_eq!(decode(&mut buf, version, MAX_PACKET_SIZE), Err(error), "decoding {bytes:02x?}");
}

/// Every packet in a captured byte stream, in order; panics if the stream does not decode whole.
pub fn decode_stream(bytes: &[u8], version: ProtocolVersion) -> Vec<Packet> {
    let mut buf = BytesMut::from(bytes);
    let mut out = Vec::new();
    let mut version = version;
    while !buf.is_empty() {
        let p = decode(&mut buf, version, MAX_PACKET_SIZE).expect("decodes").expect("whole packets");
        if let Packet::Connect(c) = &p {
            version = c.protocol;
        }
        out.push(p);
    }
    out
}
