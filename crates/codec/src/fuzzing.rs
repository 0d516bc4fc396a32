//! The bodies of the fuzz targets under `fuzz/`, kept here so that the same checks also run, bounded, under
//! `cargo test` (stable Rust has no cargo-fuzz). Each one panics only when the codec is wrong.

use bytes::BytesMut;

use crate::packet::{MAX_PACKET_SIZE, Packet, Publish, PublishParts, decode, decode_bytes, decode_publish_parts};
use crate::topic::{self, FilterTrie};
use crate::types::ProtocolVersion;

/// Decodes `data` as a stream of packets of `version`. Every packet that decodes must encode, and decode again to
/// itself; feeding the same bytes in two pieces must give the same packets as feeding them whole. Returns how many
/// packets decoded, so a bounded run can tell it reached the packet bodies.
pub fn packet_stream(data: &[u8], version: ProtocolVersion) -> usize {
    let whole = decode_all(data, version);
    for packet in &whole.0 {
        check_round_trip(packet, version);
    }
    if let Some(split) = data.first().map(|b| *b as usize % (data.len() + 1)) {
        let mut buf = BytesMut::new();
        let mut pieces = Vec::new();
        let mut error = None;
        'feed: for chunk in [&data[..split], &data[split..]] {
            buf.extend_from_slice(chunk);
            loop {
                match decode(&mut buf, version, MAX_PACKET_SIZE) {
                    Ok(Some(p)) => pieces.push(p),
                    Ok(None) => break,
                    Err(e) => {
                        error = Some(e);
                        break 'feed;
                    }
                }
            }
        }
        assert_eq!(pieces, whole.0, "packets differ when the stream arrives in two pieces");
        assert_eq!(error, whole.1, "errors differ when the stream arrives in two pieces");
    }
    // The PUBLISH fast path for bytes received whole reads the same packets, and fails the same way.
    let mut bytes = bytes::Bytes::copy_from_slice(data);
    let mut lean = Vec::new();
    let lean_error = loop {
        match decode_publish_parts(&mut bytes, version, MAX_PACKET_SIZE) {
            Ok(Some(p)) => {
                let PublishParts { dup, qos, retain, topic, packet_id, payload } = p;
                let properties = crate::Properties::default();
                lean.push(Packet::Publish(Publish { dup, qos, retain, topic, packet_id, properties, payload }));
                continue;
            }
            Ok(None) => {}
            Err(e) => break Some(e),
        }
        match decode_bytes(&mut bytes, version, MAX_PACKET_SIZE) {
            Ok(Some(p)) => lean.push(p),
            Ok(None) => break None,
            Err(e) => break Some(e),
        }
    };
    assert_eq!(lean, whole.0, "the PUBLISH fast path reads other packets");
    assert_eq!(lean_error, whole.1, "the PUBLISH fast path fails otherwise");
    whole.0.len()
}

fn decode_all(data: &[u8], version: ProtocolVersion) -> (Vec<Packet>, Option<crate::DecodeError>) {
    let mut buf = BytesMut::from(data);
    let mut packets = Vec::new();
    loop {
        match decode(&mut buf, version, MAX_PACKET_SIZE) {
            Ok(Some(p)) => packets.push(p),
            Ok(None) => return (packets, None),
            Err(e) => return (packets, Some(e)),
        }
    }
}

/// Encodes `packet` for `version` and decodes it back, which must give the same packet.
pub fn check_round_trip(packet: &Packet, version: ProtocolVersion) {
    let mut out = BytesMut::new();
    let written = packet.encode(version, &mut out).unwrap_or_else(|e| panic!("{packet:?} does not encode: {e}"));
    assert_eq!(written, out.len());
    assert_eq!(packet.encoded_len(version), Ok(written));
    let again = decode(&mut out, version, MAX_PACKET_SIZE)
        .unwrap_or_else(|e| panic!("{packet:?} encodes to bytes that do not decode: {e}"));
    assert_eq!(again.as_ref(), Some(packet), "decode(encode(p)) != p");
    assert!(out.is_empty(), "bytes left after decoding an encoded packet");
}

/// Splits `data` into a filter and a topic at the first 0xff byte; where both are valid, the trie and
/// [`topic::matches`] must agree.
pub fn topic_match(data: &[u8]) {
    let (f, t) = match data.iter().position(|b| *b == 0xff) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &b""[..]),
    };
    let (Ok(filter), Ok(name)) = (std::str::from_utf8(f), std::str::from_utf8(t)) else { return };
    let _ = topic::parse_filter(filter);
    if topic::validate_topic_filter(filter).is_err() || topic::validate_topic_name(name).is_err() {
        return;
    }
    let mut trie = FilterTrie::new();
    trie.insert(filter, ());
    assert_eq!(trie.matches(name).len() == 1, topic::matches(filter, name), "filter {filter:?} topic {name:?}");
    assert_eq!(trie.remove(filter, |_| true), 1);
    assert!(trie.is_empty());
}

/// xorshift64*: a small seeded generator for the bounded fuzz runs (this crate's and the broker's), so a failure
/// reproduces from its seed.
pub struct Rng(pub u64);

impl Rng {
    #[allow(clippy::should_implement_trait)]
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// A number below `n` (0 when `n` is 0).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}
