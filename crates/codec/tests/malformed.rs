//! Every malformed-packet and protocol-error rule the codec enforces, each with the MQTT 5.0 reason code a server
//! closes the connection with.

mod support;

use ProtocolVersion::{V5, V31, V311};
use skein_codec::*;
use support::refused;

fn code(bytes: &[u8], version: ProtocolVersion) -> ReasonCode {
    let mut buf = BytesMut::from(bytes);
    decode(&mut buf, version, MAX_PACKET_SIZE).expect_err("refused").reason_code()
}

/// A v3.1.1 CONNECT with the given flags byte and payload fields.
fn connect(level_name: &[u8], level: u8, flags: u8, tail: &[u8]) -> Vec<u8> {
    let mut body = vec![0, level_name.len() as u8];
    body.extend_from_slice(level_name);
    body.extend_from_slice(&[level, flags, 0, 60]);
    body.extend_from_slice(tail);
    let mut out = vec![0x10, body.len() as u8];
    out.extend_from_slice(&body);
    out
}

#[test]
fn remaining_length_of_five_bytes() {
    refused(&[0x30, 0xff, 0xff, 0xff, 0xff, 0x01], V311, DecodeError::MalformedVariableInteger);
    assert_eq!(code(&[0x30, 0xff, 0xff, 0xff, 0xff, 0x01], V5), ReasonCode::MalformedPacket);
    // Not the shortest form [MQTT-1.5.5-1].
    refused(&[0xc0, 0x80, 0x00], V5, DecodeError::MalformedVariableInteger);
}

#[test]
fn over_the_maximum_packet_size_before_the_body_arrives() {
    // A claim of 256 MiB: refused from the header alone, nothing buffered.
    let mut buf = BytesMut::from(&[0x30u8, 0xff, 0xff, 0xff, 0x7f][..]);
    assert_eq!(
        decode(&mut buf, V5, 1024 * 1024),
        Err(DecodeError::PacketTooLarge { size: 1 + 4 + 268_435_455, max: 1024 * 1024 })
    );
    assert_eq!(DecodeError::PacketTooLarge { size: 2, max: 1 }.reason_code(), ReasonCode::PacketTooLarge);
    // Without a limit of our own the claim is within MQTT's, so the packet waits for its bytes.
    let mut buf = BytesMut::from(&[0x30u8, 0xff, 0xff, 0xff, 0x7f][..]);
    assert_eq!(decode(&mut buf, V5, MAX_PACKET_SIZE), Ok(None));
    // The size counts the fixed header too (MQTT 5.0 section 3.1.2.11.4).
    let mut buf = BytesMut::from(&[0xc0u8, 0x00][..]);
    assert_eq!(decode(&mut buf, V5, 1), Err(DecodeError::PacketTooLarge { size: 2, max: 1 }));
    let mut buf = BytesMut::from(&[0xc0u8, 0x00][..]);
    assert_eq!(decode(&mut buf, V5, 2), Ok(Some(Packet::PingReq)));
}

#[test]
fn reserved_packet_types() {
    refused(&[0x00, 0x00], V311, DecodeError::ReservedPacketType(0));
    refused(&[0xf0, 0x00], V311, DecodeError::ReservedPacketType(15));
    refused(&[0xf0, 0x00], V31, DecodeError::ReservedPacketType(15));
    assert_eq!(code(&[0x00, 0x00], V5), ReasonCode::MalformedPacket);
}

#[test]
fn reserved_header_flags() {
    // [MQTT-2.2.2-2]: checked on the first byte, before the rest arrives.
    for first in [0x11u8, 0x21, 0x41, 0x51, 0x60, 0x63, 0x71, 0x80, 0x83, 0x91, 0xa0, 0xb1, 0xc1, 0xd1, 0xe1] {
        let mut buf = BytesMut::from(&[first][..]);
        let err = decode(&mut buf, V5, MAX_PACKET_SIZE).expect_err("reserved flags");
        assert!(matches!(err, DecodeError::InvalidHeaderFlags { .. }), "{first:#04x}: {err:?}");
        assert_eq!(err.reason_code(), ReasonCode::MalformedPacket);
    }
    refused(&[0xf1, 0x00], V5, DecodeError::InvalidHeaderFlags { packet: PacketType::Auth, flags: 1 });
}

#[test]
fn publish_rules() {
    // QoS 3 [MQTT-3.3.1-4].
    refused(&[0x36, 5, 0, 1, b't', 0, 1], V311, DecodeError::InvalidQoS);
    // DUP on QoS 0 [MQTT-3.3.1-2].
    refused(&[0x38, 3, 0, 1, b't'], V311, DecodeError::DupOnQoS0);
    // Packet identifier 0 at QoS 1 [MQTT-2.2.1-3].
    refused(&[0x32, 5, 0, 1, b't', 0, 0], V311, DecodeError::PacketIdZero { packet: PacketType::Publish });
    // Wildcards in a topic name [MQTT-3.3.2-2].
    refused(&[0x30, 3, 0, 1, b'+'], V311, DecodeError::InvalidTopicName(TopicError::Wildcard));
    refused(&[0x30, 5, 0, 3, b'a', b'/', b'#'], V311, DecodeError::InvalidTopicName(TopicError::Wildcard));
    assert_eq!(code(&[0x30, 4, 0, 1, b'+', 0], V5), ReasonCode::TopicNameInvalid);
    // Empty topic name: invalid in 3.1.1, a protocol error in 5.0 without a Topic Alias.
    refused(&[0x30, 2, 0, 0], V311, DecodeError::InvalidTopicName(TopicError::Empty));
    refused(&[0x30, 3, 0, 0, 0], V5, DecodeError::EmptyTopicWithoutAlias);
    assert_eq!(code(&[0x30, 3, 0, 0, 0], V5), ReasonCode::ProtocolError);
    // Topic Alias 0 [MQTT-3.3.2-8].
    refused(&[0x30, 7, 0, 1, b't', 3, 0x23, 0, 0], V5, DecodeError::TopicAliasZero);
    assert_eq!(code(&[0x30, 7, 0, 1, b't', 3, 0x23, 0, 0], V5), ReasonCode::TopicAliasInvalid);
    // A topic cut short by the remaining length.
    refused(&[0x30, 3, 0, 5, b't'], V311, DecodeError::Truncated { packet: PacketType::Publish });
    // Invalid UTF-8 and U+0000 in the topic [MQTT-1.5.4-1] [MQTT-1.5.4-2].
    refused(&[0x30, 4, 0, 2, 0xc3, 0x28], V311, DecodeError::InvalidUtf8);
    refused(&[0x30, 4, 0, 2, b'a', 0], V311, DecodeError::NullCharacter);
    assert_eq!(code(&[0x30, 4, 0, 2, b'a', 0], V5), ReasonCode::MalformedPacket);
}

#[test]
fn connect_rules() {
    // Protocol name and level [MQTT-3.1.2-1] [MQTT-3.1.2-2].
    refused(&connect(b"MQTX", 4, 0x02, &[0, 0]), V311, DecodeError::InvalidProtocolName("MQTX".into()));
    refused(
        &connect(b"MQTT", 6, 0x02, &[0, 0]),
        V311,
        DecodeError::UnsupportedProtocolLevel { name: "MQTT".into(), level: 6 },
    );
    refused(
        &connect(b"MQTT", 3, 0x02, &[0, 0]),
        V311,
        DecodeError::UnsupportedProtocolLevel { name: "MQTT".into(), level: 3 },
    );
    refused(
        &connect(b"MQIsdp", 4, 0x02, &[0, 0]),
        V311,
        DecodeError::UnsupportedProtocolLevel { name: "MQIsdp".into(), level: 4 },
    );
    assert_eq!(code(&connect(b"MQTT", 6, 0x02, &[0, 0]), V311), ReasonCode::UnsupportedProtocolVersion);
    assert_eq!(ReasonCode::UnsupportedProtocolVersion.to_connect_return_code(), 1);
    // Reserved flag [MQTT-3.1.2-3].
    refused(&connect(b"MQTT", 4, 0x03, &[0, 0]), V311, DecodeError::ConnectReservedFlag);
    // Will QoS / retain without will [MQTT-3.1.2-13] [MQTT-3.1.2-15].
    refused(&connect(b"MQTT", 4, 0x0a, &[0, 0]), V311, DecodeError::WillFlagsWithoutWill);
    refused(&connect(b"MQTT", 4, 0x22, &[0, 0]), V311, DecodeError::WillFlagsWithoutWill);
    // Will QoS 3 [MQTT-3.1.2-14].
    refused(&connect(b"MQTT", 4, 0x1e, &[0, 0, 0, 1, b't', 0, 0]), V311, DecodeError::InvalidWillQoS);
    // Will topic with a wildcard.
    refused(
        &connect(b"MQTT", 4, 0x06, &[0, 0, 0, 1, b'#', 0, 0]),
        V311,
        DecodeError::InvalidTopicName(TopicError::Wildcard),
    );
    // Password without user name, before 5.0 [MQTT-3.1.2-22].
    refused(&connect(b"MQTT", 4, 0x42, &[0, 0, 0, 1, b'p']), V311, DecodeError::PasswordWithoutUsername);
    refused(&connect(b"MQIsdp", 3, 0x42, &[0, 0, 0, 1, b'p']), V31, DecodeError::PasswordWithoutUsername);
    // User name flag set but the field missing.
    refused(&connect(b"MQTT", 4, 0x82, &[0, 0]), V311, DecodeError::Truncated { packet: PacketType::Connect });
    // Bytes after the last field.
    refused(
        &connect(b"MQTT", 4, 0x02, &[0, 0, 9]),
        V311,
        DecodeError::TrailingBytes { packet: PacketType::Connect, extra: 1 },
    );
    // Client identifier that is not UTF-8.
    refused(&connect(b"MQTT", 4, 0x02, &[0, 1, 0xff]), V311, DecodeError::InvalidUtf8);
}

#[test]
fn connect_v5_property_rules() {
    // Properties not allowed in CONNECT, duplicated, or with forbidden values.
    refused(
        &connect(b"MQTT", 5, 0x02, &[3, 0x23, 0, 1, 0, 0]),
        V5,
        DecodeError::PropertyNotAllowed { id: 0x23, context: "CONNECT" },
    );
    refused(&connect(b"MQTT", 5, 0x02, &[6, 0x21, 0, 1, 0x21, 0, 2, 0, 0]), V5, DecodeError::DuplicateProperty(0x21));
    assert_eq!(code(&connect(b"MQTT", 5, 0x02, &[6, 0x21, 0, 1, 0x21, 0, 2, 0, 0]), V5), ReasonCode::ProtocolError);
    refused(
        &connect(b"MQTT", 5, 0x02, &[3, 0x21, 0, 0, 0, 0]),
        V5,
        DecodeError::InvalidPropertyValue { id: 0x21, value: 0 },
    );
    refused(
        &connect(b"MQTT", 5, 0x02, &[5, 0x27, 0, 0, 0, 0, 0, 0]),
        V5,
        DecodeError::InvalidPropertyValue { id: 0x27, value: 0 },
    );
    refused(
        &connect(b"MQTT", 5, 0x02, &[2, 0x17, 2, 0, 0]),
        V5,
        DecodeError::InvalidPropertyValue { id: 0x17, value: 2 },
    );
    refused(&connect(b"MQTT", 5, 0x02, &[2, 0x7f, 0, 0, 0]), V5, DecodeError::UnknownProperty(0x7f));
    refused(&connect(b"MQTT", 5, 0x02, &[4, 0x16, 0, 1, 1, 0, 0]), V5, DecodeError::AuthDataWithoutMethod);
    // Will Delay Interval belongs to the will properties, not CONNECT's.
    refused(
        &connect(b"MQTT", 5, 0x02, &[5, 0x18, 0, 0, 0, 1, 0, 0]),
        V5,
        DecodeError::PropertyNotAllowed { id: 0x18, context: "CONNECT" },
    );
    // ... and Session Expiry Interval is not a will property.
    refused(
        &connect(b"MQTT", 5, 0x06, &[0, 0, 0, 5, 0x11, 0, 0, 0, 1, 0, 1, b't', 0, 0]),
        V5,
        DecodeError::PropertyNotAllowed { id: 0x11, context: "will properties" },
    );
    // A property block claiming more bytes than the packet has.
    refused(&connect(b"MQTT", 5, 0x02, &[9, 0x11, 0]), V5, DecodeError::Truncated { packet: PacketType::Connect });
}

#[test]
fn connack_rules() {
    refused(&[0x20, 2, 0x02, 0], V311, DecodeError::InvalidConnAckFlags(0x02));
    refused(&[0x20, 2, 0, 6], V311, DecodeError::InvalidReasonCode { packet: PacketType::ConnAck, code: 6 });
    refused(&[0x20, 3, 0, 0x8e, 0], V5, DecodeError::InvalidReasonCode { packet: PacketType::ConnAck, code: 0x8e });
    refused(&[0x20, 2, 1, 5], V311, DecodeError::SessionPresentOnError);
    refused(&[0x20, 3, 1, 0x87, 0], V5, DecodeError::SessionPresentOnError);
    refused(&[0x20, 3, 0, 0, 9], V311, DecodeError::TrailingBytes { packet: PacketType::ConnAck, extra: 1 });
}

#[test]
fn acknowledgement_rules() {
    refused(&[0x40, 2, 0, 0], V311, DecodeError::PacketIdZero { packet: PacketType::PubAck });
    refused(
        &[0x40, 3, 0, 1, 0],
        V311,
        DecodeError::InvalidRemainingLength { packet: PacketType::PubAck, expected: 2, actual: 3 },
    );
    refused(&[0x40, 1, 0], V5, DecodeError::Truncated { packet: PacketType::PubAck });
    // A reason code the packet type does not have.
    refused(&[0x62, 3, 0, 1, 0x10], V5, DecodeError::InvalidReasonCode { packet: PacketType::PubRel, code: 0x10 });
    refused(&[0x40, 3, 0, 1, 0x92], V5, DecodeError::InvalidReasonCode { packet: PacketType::PubAck, code: 0x92 });
    refused(&[0x40, 3, 0, 1, 0x05], V5, DecodeError::InvalidReasonCode { packet: PacketType::PubAck, code: 0x05 });
    refused(
        &[0x40, 6, 0, 1, 0, 2, 0x01, 1],
        V5,
        DecodeError::PropertyNotAllowed { id: 0x01, context: "PUBACK/PUBREC/PUBREL/PUBCOMP" },
    );
    refused(&[0xb0, 2, 0, 1], V5, DecodeError::Truncated { packet: PacketType::UnsubAck });
    refused(&[0xb0, 3, 0, 1, 0], V5, DecodeError::NoReasonCodes { packet: PacketType::UnsubAck });
    refused(&[0x90, 3, 0, 1, 0], V5, DecodeError::NoReasonCodes { packet: PacketType::SubAck });
    refused(&[0x90, 3, 0, 1, 3], V311, DecodeError::InvalidReasonCode { packet: PacketType::SubAck, code: 3 });
}

#[test]
fn subscribe_rules() {
    // No topic filter [MQTT-3.8.3-3] [MQTT-3.10.3-2].
    refused(&[0x82, 2, 0, 1], V311, DecodeError::NoTopicFilters { packet: PacketType::Subscribe });
    refused(&[0xa2, 3, 0, 1, 0], V5, DecodeError::NoTopicFilters { packet: PacketType::Unsubscribe });
    assert_eq!(code(&[0x82, 2, 0, 1], V311), ReasonCode::ProtocolError);
    // Packet identifier 0.
    refused(&[0x82, 6, 0, 0, 0, 1, b'a', 0], V311, DecodeError::PacketIdZero { packet: PacketType::Subscribe });
    refused(&[0xa2, 5, 0, 0, 0, 1, b'a'], V311, DecodeError::PacketIdZero { packet: PacketType::Unsubscribe });
    // Reserved option bits: 3.1.1 allows only the QoS bits [MQTT-3.8.3-4]; 5.0 bits 6 and 7 [MQTT-3.8.3-5].
    refused(&[0x82, 6, 0, 1, 0, 1, b'a', 0x04], V311, DecodeError::InvalidSubscriptionOptions(0x04));
    refused(&[0x82, 7, 0, 1, 0, 0, 1, b'a', 0x40], V5, DecodeError::InvalidSubscriptionOptions(0x40));
    refused(&[0x82, 6, 0, 1, 0, 1, b'a', 0x03], V311, DecodeError::InvalidSubscriptionOptions(0x03));
    // Retain Handling 3.
    refused(&[0x82, 7, 0, 1, 0, 0, 1, b'a', 0x30], V5, DecodeError::InvalidRetainHandling);
    assert_eq!(code(&[0x82, 7, 0, 1, 0, 0, 1, b'a', 0x30], V5), ReasonCode::ProtocolError);
    // Filter without its options byte.
    refused(&[0x82, 5, 0, 1, 0, 1, b'a'], V311, DecodeError::Truncated { packet: PacketType::Subscribe });
    // Two Subscription Identifiers in SUBSCRIBE; 0 as identifier.
    refused(&[0x82, 10, 0, 1, 4, 0x0B, 1, 0x0B, 2, 0, 1, b'a', 0], V5, DecodeError::DuplicateProperty(0x0B));
    refused(&[0x82, 8, 0, 1, 2, 0x0B, 0, 0, 1, b'a', 0], V5, DecodeError::InvalidPropertyValue { id: 0x0B, value: 0 });
}

#[test]
fn fixed_size_packets() {
    for (first, packet) in [(0xc0u8, PacketType::PingReq), (0xd0, PacketType::PingResp)] {
        refused(&[first, 1, 0], V5, DecodeError::InvalidRemainingLength { packet, expected: 0, actual: 1 });
    }
    refused(
        &[0xe0, 1, 0],
        V311,
        DecodeError::InvalidRemainingLength { packet: PacketType::Disconnect, expected: 0, actual: 1 },
    );
    refused(&[0xe0, 1, 0x05], V5, DecodeError::InvalidReasonCode { packet: PacketType::Disconnect, code: 0x05 });
    refused(&[0xf0, 1, 0x87], V5, DecodeError::InvalidReasonCode { packet: PacketType::Auth, code: 0x87 });
    refused(&[0xe0, 3, 0, 0, 1], V5, DecodeError::TrailingBytes { packet: PacketType::Disconnect, extra: 1 });
}

#[test]
fn every_error_names_a_failure_reason_code() {
    // Whatever the rule, the code closing the connection is one DISCONNECT allows (or CONNACK, for the protocol
    // version errors), and it is a failure.
    let samples: &[(&[u8], ProtocolVersion)] = &[
        (&[0x30, 0xff, 0xff, 0xff, 0xff, 0x01], V5),
        (&[0x11], V5),
        (&[0x36, 5, 0, 1, b't', 0, 1], V5),
        (&[0x30, 4, 0, 1, b'+', 0], V5),
        (&[0x30, 7, 0, 1, b't', 3, 0x23, 0, 0], V5),
        (&[0x82, 7, 0, 1, 0, 0, 1, b'a', 0x30], V5),
    ];
    for (bytes, v) in samples {
        let c = code(bytes, *v);
        assert!(c.is_error() && c.allowed_in(PacketType::Disconnect), "{bytes:02x?} -> {c:?}");
    }
}
