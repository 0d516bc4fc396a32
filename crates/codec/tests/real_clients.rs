//! Byte streams recorded between Mosquitto 2.0.11's own clients and broker (see `fixtures/README.md`): the codec
//! decodes every packet they exchanged, sees what the clients sent, and encodes each packet back to the same bytes.

mod support;

use ProtocolVersion::{V5, V31, V311};
use skein_codec::*;
use support::decode_stream;

fn fixture(name: &str) -> Vec<u8> {
    let path = format!("{}/tests/fixtures/{name}.bin", env!("CARGO_MANIFEST_DIR"));
    std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// Decodes a recorded stream and encodes the packets again: 3.x gives the recorded bytes exactly; 5.0 the same
/// length and the same packets (we write properties in identifier order, Mosquitto in its own order).
fn stream(name: &str, version: ProtocolVersion) -> Vec<Packet> {
    let bytes = fixture(name);
    let packets = decode_stream(&bytes, version);
    let mut out = BytesMut::new();
    let mut v = version;
    for p in &packets {
        if let Packet::Connect(c) = p {
            v = c.protocol;
        }
        p.encode(v, &mut out).unwrap();
    }
    assert_eq!(out.len(), bytes.len(), "{name}: re-encoding has another length");
    if version.is_v5() {
        assert_eq!(decode_stream(&out, version), packets, "{name}: re-encoding decodes to other packets");
    } else {
        assert_eq!(&out[..], &bytes[..], "{name}: re-encoding differs from the capture");
    }
    packets
}

fn kinds(packets: &[Packet]) -> Vec<PacketType> {
    packets.iter().map(Packet::packet_type).collect()
}

#[test]
fn mosquitto_pub_v5_qos1_with_properties() {
    use PacketType::*;
    let c2s = stream("v5_qos1.pub.c2s", V5);
    assert_eq!(kinds(&c2s), [Connect, Publish, Disconnect]);
    let Packet::Connect(connect) = &c2s[0] else { unreachable!() };
    assert_eq!(connect.protocol, V5);
    assert_eq!(&*connect.client_id, "fixture-pub5");
    assert_eq!(connect.properties.session_expiry_interval, Some(30));
    let Packet::Publish(publish) = &c2s[1] else { unreachable!() };
    assert_eq!(&*publish.topic, "test");
    assert_eq!(publish.qos, QoS::AtLeastOnce);
    assert_eq!(&publish.payload[..], b"Message from client XYZ");
    assert_eq!(publish.properties.user_properties, vec![("k".into(), "v".into())]);
    assert_eq!(publish.properties.content_type.as_deref(), Some("text/plain"));
    assert_eq!(publish.properties.message_expiry_interval, Some(60));

    let s2c = stream("v5_qos1.pub.s2c", V5);
    assert_eq!(kinds(&s2c), [ConnAck, PubAck]);
    let Packet::PubAck(ack) = &s2c[1] else { unreachable!() };
    assert_eq!(ack.packet_id, publish.packet_id);
}

#[test]
fn mosquitto_sub_v5_qos1() {
    use PacketType::*;
    let c2s = stream("v5_qos1.sub.c2s", V5);
    assert_eq!(kinds(&c2s), [Connect, Subscribe, PubAck, Disconnect]);
    let Packet::Subscribe(sub) = &c2s[1] else { unreachable!() };
    assert_eq!(&*sub.filters[0].0, "test");
    assert_eq!(sub.filters[0].1.qos, QoS::AtLeastOnce);
    let s2c = stream("v5_qos1.sub.s2c", V5);
    assert_eq!(kinds(&s2c), [ConnAck, SubAck, Publish]);
    let Packet::SubAck(ack) = &s2c[1] else { unreachable!() };
    assert_eq!(ack.reason_codes, vec![ReasonCode::GrantedQoS1]);
}

#[test]
fn mosquitto_v5_qos2_both_sides() {
    use PacketType::*;
    assert_eq!(kinds(&stream("v5_qos2.pub.c2s", V5)), [Connect, Publish, PubRel, Disconnect]);
    assert_eq!(kinds(&stream("v5_qos2.pub.s2c", V5)), [ConnAck, PubRec, PubComp]);
    assert_eq!(kinds(&stream("v5_qos2.sub.c2s", V5)), [Connect, Subscribe, PubRec, PubComp, Disconnect]);
    assert_eq!(kinds(&stream("v5_qos2.sub.s2c", V5)), [ConnAck, SubAck, Publish, PubRel]);
}

#[test]
fn mosquitto_pub_v311_with_will_and_credentials() {
    use PacketType::*;
    let c2s = stream("v311_qos1.pub.c2s", V311);
    assert_eq!(kinds(&c2s), [Connect, Publish, Disconnect]);
    let Packet::Connect(connect) = &c2s[0] else { unreachable!() };
    assert_eq!(connect.protocol, V311);
    assert_eq!(connect.username.as_deref(), Some("user"));
    assert_eq!(connect.password.as_deref(), Some(&b"pass"[..]));
    let will = connect.will.as_ref().expect("a will");
    assert_eq!((&*will.topic, &will.payload[..], will.qos), ("will/t", &b"bye"[..], QoS::AtLeastOnce));
    assert_eq!(kinds(&stream("v311_qos1.pub.s2c", V311)), [ConnAck, PubAck]);
    assert_eq!(kinds(&stream("v311_qos1.sub.c2s", V311)), [Connect, Subscribe, PubAck, Disconnect]);
    assert_eq!(kinds(&stream("v311_qos1.sub.s2c", V311)), [ConnAck, SubAck, Publish]);
}

#[test]
fn mosquitto_v311_retained_message() {
    let c2s = stream("v311_qos0_retain.pub.c2s", V311);
    let Packet::Publish(publish) = &c2s[1] else { unreachable!() };
    assert!(publish.retain && publish.qos == QoS::AtMostOnce);
    stream("v311_qos0_retain.pub.s2c", V311);
    stream("v311_qos0_retain.sub.c2s", V311);
    stream("v311_qos0_retain.sub2.c2s", V311);
    // A live delivery carries retain 0; the retained copy sent on subscribe carries retain 1 [MQTT-3.3.1-9].
    let live = stream("v311_qos0_retain.sub.s2c", V311);
    let late = stream("v311_qos0_retain.sub2.s2c", V311);
    let (Packet::Publish(live), Packet::Publish(late)) = (&live[2], &late[2]) else { unreachable!() };
    assert!(!live.retain);
    assert!(late.retain);
}

#[test]
fn mosquitto_v31() {
    use PacketType::*;
    let c2s = stream("v31_qos1.pub.c2s", V31);
    let Packet::Connect(connect) = &c2s[0] else { unreachable!() };
    assert_eq!(connect.protocol, V31);
    assert_eq!(kinds(&c2s), [Connect, Publish, Disconnect]);
    assert_eq!(kinds(&stream("v31_qos1.pub.s2c", V31)), [ConnAck, PubAck]);
    assert_eq!(kinds(&stream("v31_qos1.sub.c2s", V31)), [Connect, Subscribe, PubAck, Disconnect]);
    assert_eq!(kinds(&stream("v31_qos1.sub.s2c", V31)), [ConnAck, SubAck, Publish]);
}
