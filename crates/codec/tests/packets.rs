//! Every control packet of every version, decoded from and encoded to byte vectors written out from the
//! specifications' field tables (MQTT 3.1 section 3, 3.1.1 section 3, 5.0 section 3).

mod support;

use ProtocolVersion::{V5, V31, V311};
use skein_codec::*;
use support::{both_ways, decodes_to};

fn s(v: &str) -> ByteString {
    ByteString::from(v)
}

#[test]
fn connect_v311_spec_example() {
    // 3.1.1 figure 3.6 (variable header example) with client id "a", keep alive 10, clean session.
    let bytes = [0x10, 13, 0, 4, b'M', b'Q', b'T', b'T', 4, 0x02, 0, 10, 0, 1, b'a'];
    let connect = Connect {
        protocol: V311,
        clean_start: true,
        keep_alive: 10,
        properties: Properties::default(),
        client_id: s("a"),
        will: None,
        username: None,
        password: None,
    };
    both_ways(&bytes, V311, Packet::Connect(Box::new(connect)));
}

#[test]
fn connect_v31_with_will_user_and_password() {
    let mut bytes = vec![0x10, 0];
    bytes.extend_from_slice(&[0, 6]);
    bytes.extend_from_slice(b"MQIsdp");
    bytes.extend_from_slice(&[3, 0b1110_1110, 0, 60]); // user, password, will retain, will QoS 1, will, clean
    bytes.extend_from_slice(&[0, 2, b'c', b'1', 0, 3, b'w', b'/', b't', 0, 3, b'b', b'y', b'e']);
    bytes.extend_from_slice(&[0, 4, b'd', b'a', b'v', b'e', 0, 8]);
    bytes.extend_from_slice(b"password");
    bytes[1] = (bytes.len() - 2) as u8;
    let connect = Connect {
        protocol: V31,
        clean_start: true,
        keep_alive: 60,
        properties: Properties::default(),
        client_id: s("c1"),
        will: Some(Will {
            topic: s("w/t"),
            payload: Bytes::from_static(b"bye"),
            qos: QoS::AtLeastOnce,
            retain: true,
            properties: Properties::default(),
        }),
        username: Some(s("dave")),
        password: Some(Bytes::from_static(b"password")),
    };
    // The version passed in does not matter: CONNECT names its own.
    both_ways(&bytes, V311, Packet::Connect(Box::new(connect)));
}

#[test]
fn connect_v5_with_properties_and_will_properties() {
    // 5.0 section 3.1.2.12 variable header example, extended with a will.
    let bytes = [
        0x10,
        36, // fixed header
        0,
        4,
        b'M',
        b'Q',
        b'T',
        b'T',
        5,
        0b0000_0110,
        0,
        10, // name, level, flags (will, clean), keep alive
        5,
        0x11,
        0,
        0,
        0,
        10, // properties: Session Expiry Interval 10
        0,
        2,
        b'i',
        b'd', // client id
        5,
        0x18,
        0,
        0,
        0,
        5, // will properties: Will Delay Interval 5
        0,
        1,
        b't',
        0,
        2,
        b'o',
        b'k', // will topic, will payload
        0,
        0, // (no user name: these two bytes are padding counted below)
    ];
    // Drop the padding: the example has no user name.
    let bytes = &bytes[..bytes.len() - 2];
    let mut bytes = bytes.to_vec();
    bytes[1] = (bytes.len() - 2) as u8;
    let connect = Connect {
        protocol: V5,
        clean_start: true,
        keep_alive: 10,
        properties: Properties::from(PropertyValues { session_expiry_interval: Some(10), ..Default::default() }),
        client_id: s("id"),
        will: Some(Will {
            topic: s("t"),
            payload: Bytes::from_static(b"ok"),
            qos: QoS::AtMostOnce,
            retain: false,
            properties: Properties::from(PropertyValues { will_delay_interval: Some(5), ..Default::default() }),
        }),
        username: None,
        password: None,
    };
    both_ways(&bytes, V5, Packet::Connect(Box::new(connect)));
}

#[test]
fn connect_v5_password_without_user_name_is_allowed() {
    // 5.0 section 3.1.2.9 lifts 3.1.1's rule [MQTT-3.1.2-22].
    let bytes = [0x10, 17, 0, 4, b'M', b'Q', b'T', b'T', 5, 0x40, 0, 0, 0, 0, 0, 0, 3, b'p', b'w', b'd'];
    let mut bytes = bytes.to_vec();
    bytes[1] = (bytes.len() - 2) as u8;
    let connect = Connect {
        protocol: V5,
        clean_start: false,
        keep_alive: 0,
        properties: Properties::default(),
        client_id: s(""),
        will: None,
        username: None,
        password: Some(Bytes::from_static(b"pwd")),
    };
    both_ways(&bytes, V5, Packet::Connect(Box::new(connect)));
}

#[test]
fn connack_every_version() {
    let ok = ConnAck { session_present: true, reason_code: ReasonCode::Success, properties: Properties::default() };
    both_ways(&[0x20, 2, 1, 0], V311, Packet::ConnAck(ok.clone()));
    both_ways(&[0x20, 2, 1, 0], V31, Packet::ConnAck(ok.clone()));
    both_ways(&[0x20, 3, 1, 0, 0], V5, Packet::ConnAck(ok));
    // 3.1.1 return code 5 (not authorized) and its 5.0 counterpart 0x87.
    let refused =
        ConnAck { session_present: false, reason_code: ReasonCode::NotAuthorized, properties: Properties::default() };
    both_ways(&[0x20, 2, 0, 5], V311, Packet::ConnAck(refused.clone()));
    both_ways(&[0x20, 3, 0, 0x87, 0], V5, Packet::ConnAck(refused));
    // 5.0 CONNACK properties as a server sends them.
    let props = Properties::from(PropertyValues {
        assigned_client_identifier: Some(s("auto-1")),
        topic_alias_maximum: Some(10),
        receive_maximum: Some(20),
        maximum_qos: Some(1),
        retain_available: Some(1),
        server_keep_alive: Some(30),
        shared_subscription_available: Some(1),
        ..Default::default()
    });
    let mut bytes = vec![0x20, 0, 0, 0x00, 0];
    bytes.extend_from_slice(&[0x12, 0, 6]);
    bytes.extend_from_slice(b"auto-1");
    bytes.extend_from_slice(&[0x13, 0, 30, 0x21, 0, 20, 0x22, 0, 10, 0x24, 1, 0x25, 1, 0x2A, 1]);
    bytes[4] = (bytes.len() - 5) as u8;
    bytes[1] = (bytes.len() - 2) as u8;
    both_ways(
        &bytes,
        V5,
        Packet::ConnAck(ConnAck { session_present: false, reason_code: ReasonCode::Success, properties: props }),
    );
}

#[test]
fn publish_qos0_qos1_qos2_and_flags() {
    let p0 = Publish {
        dup: false,
        qos: QoS::AtMostOnce,
        retain: false,
        topic: s("a/b"),
        packet_id: 0,
        properties: Properties::default(),
        payload: Bytes::from_static(b"hi"),
    };
    both_ways(&[0x30, 7, 0, 3, b'a', b'/', b'b', b'h', b'i'], V311, Packet::Publish(p0.clone()));
    both_ways(&[0x30, 8, 0, 3, b'a', b'/', b'b', 0, b'h', b'i'], V5, Packet::Publish(p0.clone()));
    let p1 = Publish { qos: QoS::AtLeastOnce, packet_id: 10, retain: true, ..p0.clone() };
    both_ways(&[0x33, 9, 0, 3, b'a', b'/', b'b', 0, 10, b'h', b'i'], V31, Packet::Publish(p1));
    let p2 = Publish { qos: QoS::ExactlyOnce, packet_id: 0xffff, dup: true, payload: Bytes::new(), ..p0 };
    both_ways(&[0x3c, 7, 0, 3, b'a', b'/', b'b', 0xff, 0xff], V311, Packet::Publish(p2));
}

#[test]
fn publish_v5_properties_and_topic_alias() {
    let props = Properties::from(PropertyValues {
        payload_format_indicator: Some(1),
        message_expiry_interval: Some(60),
        topic_alias: Some(3),
        response_topic: Some(s("r")),
        correlation_data: Some(Bytes::from_static(&[1, 2])),
        subscription_identifiers: vec![7, 300],
        content_type: Some(s("text/plain")),
        user_properties: vec![(s("k"), s("v"))],
        ..Default::default()
    });
    let mut bytes = vec![0x32, 0, 0, 0, 0, 5, 0]; // topic "" (alias stands for it), packet id 5
    let mut p = vec![0x01, 1, 0x02, 0, 0, 0, 60, 0x03, 0, 10];
    p.extend_from_slice(b"text/plain");
    p.extend_from_slice(&[0x08, 0, 1, b'r', 0x09, 0, 2, 1, 2, 0x23, 0, 3, 0x0B, 7, 0x0B, 0xac, 0x02]);
    p.extend_from_slice(&[0x26, 0, 1, b'k', 0, 1, b'v']);
    bytes.push(p.len() as u8);
    bytes.extend_from_slice(&p);
    bytes.extend_from_slice(b"{}");
    bytes.remove(6); // the packet id is two bytes: 0, 5
    bytes[1] = (bytes.len() - 2) as u8;
    let publish = Publish {
        dup: false,
        qos: QoS::AtLeastOnce,
        retain: false,
        topic: s(""),
        packet_id: 5,
        properties: props,
        payload: Bytes::from_static(b"{}"),
    };
    both_ways(&bytes, V5, Packet::Publish(publish));
}

#[test]
fn acknowledgements_of_every_kind() {
    let ack = Ack::new(0x1234);
    for (first, make) in [
        (0x40u8, Packet::PubAck as fn(Ack) -> Packet),
        (0x50, Packet::PubRec),
        (0x62, Packet::PubRel),
        (0x70, Packet::PubComp),
    ] {
        for v in [V31, V311, V5] {
            both_ways(&[first, 2, 0x12, 0x34], v, make(ack.clone()));
        }
        // 5.0 long forms of Success: reason code alone, reason code with empty properties.
        decodes_to(&[first, 3, 0x12, 0x34, 0], V5, make(ack.clone()));
        decodes_to(&[first, 4, 0x12, 0x34, 0, 0], V5, make(ack.clone()));
    }
    let no_subs = Ack { reason_code: ReasonCode::NoMatchingSubscribers, ..ack.clone() };
    both_ways(&[0x40, 3, 0x12, 0x34, 0x10], V5, Packet::PubAck(no_subs));
    let refused = Ack {
        reason_code: ReasonCode::NotAuthorized,
        properties: Properties::from(PropertyValues { reason_string: Some(s("acl")), ..Default::default() }),
        ..ack.clone()
    };
    both_ways(&[0x50, 10, 0x12, 0x34, 0x87, 6, 0x1F, 0, 3, b'a', b'c', b'l'], V5, Packet::PubRec(refused));
    let missing = Ack { reason_code: ReasonCode::PacketIdentifierNotFound, ..ack };
    both_ways(&[0x70, 3, 0x12, 0x34, 0x92], V5, Packet::PubComp(missing.clone()));
    both_ways(&[0x62, 3, 0x12, 0x34, 0x92], V5, Packet::PubRel(missing));
}

#[test]
fn subscribe_and_suback() {
    let sub = Subscribe {
        packet_id: 1,
        properties: Properties::default(),
        filters: vec![
            (s("a/+"), SubscriptionOptions { qos: QoS::AtLeastOnce, ..Default::default() }),
            (s("#"), SubscriptionOptions { qos: QoS::ExactlyOnce, ..Default::default() }),
        ],
    };
    both_ways(&[0x82, 12, 0, 1, 0, 3, b'a', b'/', b'+', 1, 0, 1, b'#', 2], V311, Packet::Subscribe(sub.clone()));
    both_ways(&[0x82, 13, 0, 1, 0, 0, 3, b'a', b'/', b'+', 1, 0, 1, b'#', 2], V5, Packet::Subscribe(sub));
    let v5 = Subscribe {
        packet_id: 2,
        properties: Properties::from(PropertyValues { subscription_identifiers: vec![9], ..Default::default() }),
        filters: vec![(
            s("$share/g/t"),
            SubscriptionOptions {
                qos: QoS::AtMostOnce,
                no_local: true,
                retain_as_published: true,
                retain_handling: RetainHandling::DoNotSend,
            },
        )],
    };
    let mut bytes = vec![0x82, 0, 0, 2, 2, 0x0B, 9, 0, 10];
    bytes.extend_from_slice(b"$share/g/t");
    bytes.push(0b0010_1100);
    bytes[1] = (bytes.len() - 2) as u8;
    both_ways(&bytes, V5, Packet::Subscribe(v5));

    let granted = vec![ReasonCode::GrantedQoS1, ReasonCode::Success, ReasonCode::UnspecifiedError];
    let ack = SubAck { packet_id: 1, properties: Properties::default(), reason_codes: granted };
    both_ways(&[0x90, 5, 0, 1, 1, 0, 0x80], V311, Packet::SubAck(ack.clone()));
    both_ways(&[0x90, 6, 0, 1, 0, 1, 0, 0x80], V5, Packet::SubAck(ack));
    // Every 5.0 failure reads back as 0x80 in 3.1.1.
    let v5_only =
        SubAck { packet_id: 1, properties: Properties::default(), reason_codes: vec![ReasonCode::TopicFilterInvalid] };
    let mut buf = BytesMut::new();
    Packet::SubAck(v5_only).encode(V311, &mut buf).unwrap();
    assert_eq!(&buf[..], &[0x90, 3, 0, 1, 0x80]);
}

#[test]
fn unsubscribe_and_unsuback() {
    let unsub = Unsubscribe { packet_id: 3, properties: Properties::default(), filters: vec![s("a"), s("b/#")] };
    both_ways(&[0xa2, 10, 0, 3, 0, 1, b'a', 0, 3, b'b', b'/', b'#'], V311, Packet::Unsubscribe(unsub.clone()));
    both_ways(&[0xa2, 11, 0, 3, 0, 0, 1, b'a', 0, 3, b'b', b'/', b'#'], V5, Packet::Unsubscribe(unsub));
    let v3 = UnsubAck { packet_id: 3, properties: Properties::default(), reason_codes: vec![] };
    both_ways(&[0xb0, 2, 0, 3], V311, Packet::UnsubAck(v3));
    let v5 = UnsubAck {
        packet_id: 3,
        properties: Properties::default(),
        reason_codes: vec![ReasonCode::Success, ReasonCode::NoSubscriptionExisted],
    };
    both_ways(&[0xb0, 5, 0, 3, 0, 0, 0x11], V5, Packet::UnsubAck(v5));
}

#[test]
fn ping_disconnect_auth() {
    for v in [V31, V311, V5] {
        both_ways(&[0xc0, 0], v, Packet::PingReq);
        both_ways(&[0xd0, 0], v, Packet::PingResp);
        both_ways(&[0xe0, 0], v, Packet::Disconnect(Disconnect::default()));
    }
    decodes_to(&[0xe0, 1, 0], V5, Packet::Disconnect(Disconnect::default()));
    both_ways(&[0xe0, 1, 0x8e], V5, Packet::Disconnect(Disconnect::new(ReasonCode::SessionTakenOver)));
    let with_props = Disconnect {
        reason_code: ReasonCode::UseAnotherServer,
        properties: Properties::from(PropertyValues { server_reference: Some(s("n2")), ..Default::default() }),
    };
    both_ways(&[0xe0, 7, 0x9c, 5, 0x1C, 0, 2, b'n', b'2'], V5, Packet::Disconnect(with_props));
    both_ways(&[0xf0, 0], V5, Packet::Auth(Auth::default()));
    let auth = Auth {
        reason_code: ReasonCode::ContinueAuthentication,
        properties: Properties::from(PropertyValues {
            authentication_method: Some(s("SCRAM")),
            authentication_data: Some(Bytes::from_static(b"x")),
            ..Default::default()
        }),
    };
    both_ways(
        &[0xf0, 14, 0x18, 12, 0x15, 0, 5, b'S', b'C', b'R', b'A', b'M', 0x16, 0, 1, b'x'],
        V5,
        Packet::Auth(auth),
    );
    // AUTH does not exist before 5.0.
    assert_eq!(
        Packet::Auth(Auth::default()).encode(V311, &mut BytesMut::new()),
        Err(EncodeError::NotInVersion { packet: PacketType::Auth, version: V311 })
    );
}

#[test]
fn streaming_needs_more_bytes_then_yields_the_packet() {
    let bytes = [0x30, 7, 0, 3, b'a', b'/', b'b', b'h', b'i', 0xc0, 0];
    let mut buf = BytesMut::new();
    for (i, b) in bytes.iter().enumerate() {
        buf.extend_from_slice(&[*b]);
        let got = decode(&mut buf, V311, MAX_PACKET_SIZE).unwrap();
        match i {
            8 => assert!(matches!(got, Some(Packet::Publish(_)))),
            10 => assert_eq!(got, Some(Packet::PingReq)),
            _ => assert_eq!(got, None, "after byte {i}"),
        }
    }
    assert!(buf.is_empty());
}

#[test]
fn payload_is_a_slice_of_the_received_buffer() {
    let mut buf = BytesMut::from(&[0x30, 7, 0, 3, b'a', b'/', b'b', b'h', b'i'][..]);
    let start = buf.as_ptr() as usize;
    let Some(Packet::Publish(p)) = decode(&mut buf, V311, MAX_PACKET_SIZE).unwrap() else { panic!("a publish") };
    assert_eq!(p.payload.as_ptr() as usize, start + 7, "payload not copied");
    assert_eq!(p.topic.as_bytes().as_ptr() as usize, start + 4, "topic not copied");
}

#[test]
fn encoded_len_matches_encode() {
    let p = Packet::Publish(Publish {
        dup: false,
        qos: QoS::AtLeastOnce,
        retain: false,
        topic: s("t"),
        packet_id: 1,
        properties: Properties::from(PropertyValues { message_expiry_interval: Some(1), ..Default::default() }),
        payload: Bytes::from(vec![0u8; 300]),
    });
    let mut buf = BytesMut::new();
    for v in [V311, V5] {
        buf.clear();
        assert_eq!(p.encode(v, &mut buf), p.encoded_len(v));
    }
}

#[test]
fn decode_bytes_reads_whole_packets_in_place() {
    // Two PUBLISH packets back to back, then the start of a third.
    let mut wire = BytesMut::new();
    for (topic, payload) in [("a/b", &b"first"[..]), ("c", &b"second"[..])] {
        let p = Publish {
            dup: false,
            qos: QoS::AtMostOnce,
            retain: false,
            topic: s(topic),
            packet_id: 0,
            properties: Properties::default(),
            payload: Bytes::copy_from_slice(payload),
        };
        Packet::Publish(p).encode(V5, &mut wire).unwrap();
    }
    wire.extend_from_slice(&[0x30, 10, 0]);
    let mut bytes = wire.freeze();
    let start = bytes.as_ptr() as usize;
    let end = start + bytes.len();
    let mut payloads = Vec::new();
    while let Some(packet) = decode_bytes(&mut bytes, V5, MAX_PACKET_SIZE).unwrap() {
        let Packet::Publish(p) = packet else { panic!("a PUBLISH") };
        let at = p.payload.as_ptr() as usize;
        assert!(at >= start && at < end, "the payload is a slice of the input, not a copy");
        payloads.push((p.topic.to_string(), p.payload));
    }
    assert_eq!(payloads, vec![("a/b".into(), Bytes::from("first")), ("c".into(), Bytes::from("second"))]);
    assert_eq!(&bytes[..], &[0x30, 10, 0], "an incomplete packet is left as it was");
    // The same limits and checks as `decode`.
    let mut big = bytes.clone();
    assert_eq!(decode_bytes(&mut big, V5, 5), Err(DecodeError::PacketTooLarge { size: 12, max: 5 }));
}

#[test]
fn a_bare_publish_writes_the_bytes_of_a_publish_without_properties() {
    let payloads: [&[u8]; 3] = [b"", b"hello", &[7u8; 300]];
    for version in [V31, V311, V5] {
        for qos in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce] {
            for payload in payloads {
                for (dup, retain) in [(false, false), (true, true)] {
                    let dup = dup && qos != QoS::AtMostOnce;
                    let packet_id = if qos == QoS::AtMostOnce { 0 } else { 513 };
                    let full = Publish {
                        dup,
                        qos,
                        retain,
                        topic: s("a/b"),
                        packet_id,
                        properties: Properties::default(),
                        payload: bytes::Bytes::copy_from_slice(payload),
                    };
                    let bare = BarePublish { dup, qos, retain, topic: "a/b", packet_id, payload };
                    let (mut want, mut got) = (bytes::BytesMut::new(), bytes::BytesMut::new());
                    let n = Packet::Publish(full.clone()).encode(version, &mut want).unwrap();
                    assert_eq!(bare.encode(version, &mut got).unwrap(), n);
                    assert_eq!(got, want, "{version} {qos:?} {} bytes", payload.len());
                    assert_eq!(bare.encoded_len(version).unwrap(), n);
                    // And it reads back as that packet.
                    assert_eq!(decode(&mut got, version, usize::MAX).unwrap(), Some(Packet::Publish(full)));
                }
            }
        }
    }
    // A QoS 1 packet needs a packet identifier, as a full one does.
    let bare = BarePublish { dup: false, qos: QoS::AtLeastOnce, retain: false, topic: "t", packet_id: 0, payload: b"" };
    assert!(bare.encode(V311, &mut bytes::BytesMut::new()).is_err());
}

#[test]
fn publish_parts_read_a_publish_without_properties_as_the_full_decoder_does() {
    for version in [V31, V311, V5] {
        for qos in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce] {
            for (dup, retain) in [(false, false), (true, true)] {
                let dup = dup && qos != QoS::AtMostOnce;
                let packet_id = if qos == QoS::AtMostOnce { 0 } else { 77 };
                let full = Publish {
                    dup,
                    qos,
                    retain,
                    topic: s("a/b/c"),
                    packet_id,
                    properties: Properties::default(),
                    payload: bytes::Bytes::from_static(b"payload"),
                };
                let mut wire = bytes::BytesMut::new();
                Packet::Publish(full.clone()).encode(version, &mut wire).unwrap();
                wire.extend_from_slice(&[0xc0, 0x00]); // a PINGREQ after it stays in the buffer
                let mut buf = wire.freeze();
                let parts = decode_publish_parts(&mut buf, version, usize::MAX).unwrap().expect("no properties");
                assert_eq!(
                    (parts.dup, parts.qos, parts.retain, &parts.topic[..], parts.packet_id, &parts.payload[..]),
                    (dup, qos, retain, "a/b/c", packet_id, &b"payload"[..]),
                    "{version} {qos:?}"
                );
                assert_eq!(&buf[..], &[0xc0, 0x00], "only the PUBLISH is taken");
            }
        }
    }
    // With properties, or not a PUBLISH, or not whole: nothing is taken and the full decoder reads it.
    let with_props = Publish {
        dup: false,
        qos: QoS::AtLeastOnce,
        retain: false,
        topic: s("t"),
        packet_id: 1,
        properties: Properties::from(PropertyValues { message_expiry_interval: Some(9), ..Default::default() }),
        payload: bytes::Bytes::from_static(b"x"),
    };
    let mut wire = bytes::BytesMut::new();
    Packet::Publish(with_props.clone()).encode(V5, &mut wire).unwrap();
    let whole = wire.freeze();
    let mut buf = whole.clone();
    assert_eq!(decode_publish_parts(&mut buf, V5, usize::MAX).unwrap(), None);
    assert_eq!(decode_bytes(&mut buf, V5, usize::MAX).unwrap(), Some(Packet::Publish(with_props)));
    let mut ping = bytes::Bytes::from_static(&[0xc0, 0x00]);
    assert_eq!(decode_publish_parts(&mut ping, V5, usize::MAX).unwrap(), None);
    assert_eq!(ping.len(), 2);
    let mut cut = whole.slice(..whole.len() - 1);
    assert_eq!(decode_publish_parts(&mut cut, V5, usize::MAX).unwrap(), None);
    // Malformed: the full decoder's errors.
    for bad in [
        &[0x30, 0x03, 0x00, 0x01, b'+'][..],             // a wildcard in a topic name
        &[0x3a, 0x04, 0x00, 0x01, b't', 0x00][..],       // QoS 1 whose packet identifier is cut short
        &[0x30, 0x03, 0x00, 0x00, 0x00][..],             // 5.0: empty topic without an alias
        &[0x36, 0x05, 0x00, 0x01, b't', 0x00, 0x01][..], // QoS 3
    ] {
        for version in [V311, V5] {
            let got = decode_publish_parts(&mut bytes::Bytes::copy_from_slice(bad), version, usize::MAX);
            let want = decode_bytes(&mut bytes::Bytes::copy_from_slice(bad), version, usize::MAX);
            match (got, want) {
                (Err(g), Err(w)) => assert_eq!(g.to_string(), w.to_string(), "{bad:02x?} {version}"),
                (g, w) => panic!("{bad:02x?} {version}: parts {g:?}, full {w:?}"),
            }
        }
    }
}

/// `packet_size` walks encoded packets: a PINGRESP, a PUBLISH with a two-byte length field, and nothing more until a
/// packet's fixed header is whole.
#[test]
fn packet_size_is_the_whole_packet_once_its_fixed_header_is_there() {
    let mut buf = BytesMut::new();
    Packet::PingResp.encode(ProtocolVersion::V311, &mut buf).unwrap();
    let publish = Packet::Publish(Publish {
        dup: false,
        qos: QoS::AtMostOnce,
        retain: false,
        topic: "t".into(),
        packet_id: 0,
        properties: Properties::default(),
        payload: Bytes::from(vec![0u8; 200]),
    });
    publish.encode(ProtocolVersion::V311, &mut buf).unwrap();
    assert_eq!(packet_size(&buf), Some(2));
    assert_eq!(packet_size(&buf[2..]), Some(buf.len() - 2), "length field 0xCB 0x01");
    assert_eq!(packet_size(&buf[2..5]), Some(buf.len() - 2), "the size is known before the body is there");
    assert_eq!(packet_size(&buf[2..4]), None, "length field cut");
    assert_eq!(packet_size(&[]), None);
    assert_eq!(packet_size(&[0x30, 0xff, 0xff, 0xff, 0xff]), None, "a length field of five bytes");
}
